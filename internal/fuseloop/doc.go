// Package fuseloop serves a go-fuse RawFileSystem over a FUSE connection
// it mounts and reads itself, instead of through go-fuse's Server loop.
//
// It owns the FUSE connection of one mount: opening /dev/fuse and
// mounting it (mount(2) as root, fusermount3 otherwise), INIT, the
// request loops that carry requests from the kernel to go-fuse's
// ProtocolServer and replies back, and unmounting. It does not know what
// the file system is: the union's node tree lives in unionfs, which
// hands this package a RawFileSystem.
//
// Transports (Options.Transport):
//
//   - "dev-fuse": one reader thread reads /dev/fuse, handles the request
//     inline and writes the reply (devloop.go). A request that blocks
//     for more than spareAfter has a spare reader started beside it, so
//     the loop only grows where requests block.
//   - "io_uring": FUSE-over-io_uring where the kernel offers it
//     (uring_queue.go); the /dev/fuse loop keeps running beside it for
//     what the kernel still sends there (FORGET, INTERRUPT).
//   - "go-fuse": go-fuse's own Server loop, as before this package.
//   - "auto": io_uring where it can run, dev-fuse otherwise.
//
// INIT is answered by a fuse.Server made over a dup of the device fd
// (see initreplay.go): go-fuse's node bridge needs a real *fuse.Server
// for notify calls and the passthrough backing-fd ioctls, and that
// server is never served; the ProtocolServer is told the negotiated
// settings by replaying the INIT request into it.
//
// Concurrency: the RawFileSystem is called from several threads at
// once, for any requests, as go-fuse's own loop does.
//
// Lock order (a tree; nothing is taken while holding a lock below it):
//
//	Server.mu (unmount state)
//	  devLoop.mu (reader counts)
package fuseloop
