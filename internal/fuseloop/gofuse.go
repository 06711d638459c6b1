package fuseloop

import (
	"fmt"
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// mountGoFUSE mounts and serves through go-fuse's own Server and its
// loop, as the union did before this package: kept to compare with and
// to fall back on.
func mountGoFUSE(mountpoint string, raw fuse.RawFileSystem, mo fuse.MountOptions, ended func()) (*Server, error) {
	mo.DirectMount = os.Geteuid() == 0
	server, err := fuse.NewServer(raw, mountpoint, &mo)
	if err == nil {
		go server.Serve()
		err = server.WaitMount()
	}
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	s := &Server{
		transport:     TransportGoFUSE,
		whyNotIOURing: "transport=" + TransportGoFUSE,
		fd:            -1,
		fuse:          server,
		logger:        mo.Logger,
		served:        make(chan struct{}),
	}
	go func() {
		server.Wait()
		ended()
		close(s.served)
	}()
	return s, nil
}
