package fuseloop

import "errors"

// The FUSE-over-io_uring transport.
//
// HOOK for the io_uring transport (branch uring): replace the two
// functions below. startIOURing is called once INIT has granted
// FUSE_OVER_IO_URING and the /dev/fuse loop runs; it sets up the rings
// on s.fd, serves each request with s.handle, and returns an error
// (shown by WhyNotIOURing) if it cannot, leaving dev-fuse serving.
// waitIOURing returns once its queues have ended (the connection is
// over: its commands complete with ENODEV or ECANCELED).

// errIOURingNotBuilt is the reason io_uring does not serve until the
// transport is written.
var errIOURingNotBuilt = errors.New("not built")

func (s *Server) startIOURing() error { return errIOURingNotBuilt }

func (s *Server) waitIOURing() {}
