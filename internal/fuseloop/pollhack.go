package fuseloop

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// pollHackName is the name go-fuse's ProtocolServer answers itself (a
// file that exists in no file system) so that a daemon can have the
// kernel send it a POLL at mount.
const pollHackName = ".go-fuse-epoll-hack"

// refusePoll makes the kernel ask the daemon for POLL once, now, so the
// ProtocolServer's ENOSYS turns POLL off for the connection. Otherwise
// the first file of the mount that the Go runtime of this same process
// registers with its epoll (os.Open does) sends a POLL from inside
// epoll_ctl, a call the runtime makes without giving up its processor: a
// garbage collection then waits for that processor to stop, and every
// goroutine, our readers with it, waits for the collection. The mount
// and the process hang together. The open and poll here go straight to
// the kernel, not through the runtime's poller.
func refusePoll(mountpoint string) error {
	fd, err := unix.Open(filepath.Join(mountpoint, pollHackName), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("turn POLL off: %w", err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}
	unix.Poll(fds, 0) // only the request matters, not its answer
	return nil
}
