package fuseloop

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// pollOnce makes the kernel send its one FUSE_POLL now, from a plain
// poll(2), so that the ENOSYS answer turns polling off for the connection.
// Otherwise the first os.Open of a file on the mount sends it from inside
// the Go runtime's epoll_ctl, which holds a P while it waits; two such
// opens on a 2-CPU machine leave no P for the thread that must answer, and
// the process hangs on its own mount (go-fuse's pollHack, for the same
// reason).
func pollOnce(dir string) error {
	fd, err := unix.Open(filepath.Join(dir, ".go-fuse-epoll-hack"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("poll hack: %w", err)
	}
	defer unix.Close(fd)
	_, err = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	return err
}
