package fuseloop

import "errors"

// The FUSE-over-io_uring transport.
//
// HOOK for the io_uring transport (branch uring): replace the three
// functions below.
//
//   - canServeIOURing is asked before mounting: nil means this build
//     serves rings, and FUSE_OVER_IO_URING is requested in INIT. It must
//     be right: once INIT grants it, the kernel holds every request back
//     until the rings are registered, so there is no falling back to
//     /dev/fuse after INIT.
//   - startIOURing is called once INIT has granted it, with the /dev/fuse
//     loop running (the kernel still queues FORGET and INTERRUPT there):
//     it registers the rings on s.fd and serves each request with
//     s.handle. An error fails the mount.
//   - waitIOURing returns once its queues have ended (the connection is
//     over).

// errIOURingNotBuilt is why io_uring does not serve until the transport
// is written.
var errIOURingNotBuilt = errors.New("not built")

func canServeIOURing() error { return errIOURingNotBuilt }

func (s *Server) startIOURing() error { return errIOURingNotBuilt }

func (s *Server) waitIOURing() {}
