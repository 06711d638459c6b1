package fuseloop

import (
	"errors"
	"fmt"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The Server's io_uring hook: start the queue transport on the connection
// once INIT granted FUSE_OVER_IO_URING, and wait for its queues when the
// connection is over.

// canServeIOURing reports whether this process can set up the rings: an
// io_uring it may create (kernel.io_uring_disabled, seccomp and old
// kernels say no) and a CPU count to size the queues by. Once INIT grants
// FUSE_OVER_IO_URING there is no way back, so this is asked before.
func canServeIOURing() error {
	if _, err := possibleCPUs(); err != nil {
		return err
	}
	r, err := newURing(2)
	if err != nil {
		return err
	}
	r.close()
	return nil
}

// startIOURing serves the connection's requests through one io_uring per
// CPU beside the /dev/fuse loop. On error the rings that did register wait
// harmlessly for the connection to end (the kernel keeps using /dev/fuse
// while any CPU's queue is missing).
func (s *Server) startIOURing() error {
	if s.KernelSettings().Flags64()&fuse.CAP_OVER_IO_URING == 0 {
		return errors.New("the kernel did not offer FUSE_OVER_IO_URING in INIT")
	}
	t, err := StartURing(URingConfig{
		DevFD:    s.fd,
		MaxWrite: s.bufSize - pageSize,
		Handle:   s.handle,
		Logf:     s.logger.Printf,
	})
	s.uring = t
	if err != nil {
		return fmt.Errorf("io_uring: %w", err)
	}
	return nil
}

// uringServed waits until no io_uring queue will run a request any more,
// and says whether that came within closeGrace (true without io_uring).
// Preconditions: the connection is over.
func (s *Server) uringServed() bool {
	if s.uring == nil {
		return true
	}
	grace := time.NewTimer(closeGrace)
	defer grace.Stop()
	select {
	case <-s.uring.Done():
		return true
	case <-grace.C:
		return false
	}
}

// waitIOURing returns once the queues have ended. Preconditions: the
// connection is over (the /dev/fuse loop saw ENODEV).
func (s *Server) waitIOURing() {
	if s.uring == nil {
		return
	}
	if err := s.uring.Close(); err != nil {
		s.logger.Printf("io_uring: %v", err)
	}
}
