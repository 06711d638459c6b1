package fuseloop

import (
	"fmt"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// answerInit has go-fuse answer the kernel's INIT on a fuse.Server made
// over a dup of fd, and returns that server. fuse.NewServer reads INIT,
// replies, calls the file system's Init with the server and returns
// without serving: the server must never be served while the connection
// lives, or it would take requests from our loop. The file system keeps
// it for notify calls and the passthrough ioctls, which go to the same
// connection through the dup.
func answerInit(fd int, raw fuse.RawFileSystem, o fuse.MountOptions) (*fuse.Server, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup the FUSE fd: %w", err)
	}
	// "/dev/fd/N" tells go-fuse the connection is mounted already;
	// the fuse.Server owns the dup from here on.
	o.DirectMount = false
	o.DirectMountStrict = false
	server, err := fuse.NewServer(raw, fmt.Sprintf("/dev/fd/%d", dup), &o)
	if err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("init: %w", err)
	}
	return server, nil
}

// replayInit tells ps what INIT negotiated (protocol minor, flags; they
// decide how later requests are parsed) by handing it the kernel's INIT
// request again. Its reply, the same go-fuse computed for the kernel, is
// dropped.
func replayInit(ps *fuse.ProtocolServer, settings *fuse.InitIn, outSize int) error {
	in := *settings
	in.Length = uint32(unsafe.Sizeof(in))
	request := unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in))
	out := make([]byte, outSize)
	n, status := ps.HandleRequest([][]byte{request}, [][]byte{out})
	if !status.Ok() {
		return fmt.Errorf("replay INIT: %v", status)
	}
	var header fuse.OutHeader
	if n < int(unsafe.Sizeof(header)) {
		return fmt.Errorf("replay INIT: %d-byte reply", n)
	}
	header = *(*fuse.OutHeader)(unsafe.Pointer(&out[0]))
	if header.Status != 0 {
		return fmt.Errorf("replay INIT: status %d", header.Status)
	}
	return nil
}
