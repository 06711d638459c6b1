package fuseloop

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Server is one mounted FUSE connection and the loops serving it.
// Wait and Unmount may be called from any goroutine.
type Server struct {
	transport     string // what serves requests now
	whyNotIOURing string // empty when io_uring serves

	// fd is the /dev/fuse connection our loops read and write. It is
	// closed once every loop has ended; -1 for the go-fuse transport.
	fd int
	// fuse is go-fuse's server for the connection: the one that
	// answered INIT and sends notifications. It serves requests only
	// in the go-fuse transport.
	fuse *fuse.Server
	// protocol decodes requests and calls the file system; nil for
	// the go-fuse transport.
	protocol *fuse.ProtocolServer
	// bufSize is the size of one request or reply buffer: the largest
	// WRITE or READ payload and a page for the headers.
	bufSize int
	logger  *log.Logger

	dev     *deviceMount // nil for the go-fuse transport
	devLoop *devLoop
	uring   *URingTransport // nil unless io_uring was tried

	// splicedReplies counts READ replies spliced from a file, and
	// repliesCopiedAfterSplice those rebuilt in the reply buffer when the
	// file gave less than asked (see FileRead).
	splicedReplies, repliesCopiedAfterSplice atomic.Uint64

	// served is closed when the connection has ended and every loop
	// has returned (after ended has run).
	served chan struct{}
	// ended is Options.Ended (a no-op when not given); endOnce runs it.
	ended   func()
	endOnce sync.Once

	mu sync.Mutex
	// unmounted is set once an unmount has succeeded. Guarded by mu.
	unmounted bool
}

// Mount mounts a FUSE connection at mountpoint, answers INIT and serves
// raw over the transport opts names (falling back as Transport and
// WhyNotIOURing report). It returns once the mount is in place.
func Mount(mountpoint string, raw fuse.RawFileSystem, opts Options) (*Server, error) {
	transport := opts.Transport
	if transport == "" {
		transport = TransportAuto
	}
	if err := CheckTransport(transport); err != nil {
		return nil, err
	}
	mo := opts.Mount
	if mo.Logger == nil {
		mo.Logger = log.New(os.Stderr, "", log.LstdFlags)
	}
	if mo.MaxWrite <= 0 {
		mo.MaxWrite = 128 << 10 // go-fuse's default
	}
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, err
	}
	ended := opts.Ended
	if ended == nil {
		ended = func() {}
	}
	if transport == TransportGoFUSE {
		return mountGoFUSE(abs, raw, mo, ended)
	}

	s := &Server{
		transport: TransportDevFUSE,
		logger:    mo.Logger,
		bufSize:   mo.MaxWrite + pageSize,
		served:    make(chan struct{}),
		ended:     ended,
	}
	// Once INIT grants FUSE_OVER_IO_URING the kernel holds every
	// request back until rings are registered: io_uring is asked for
	// only where this build can serve it, and then failing to start it
	// fails the mount.
	wantURing := transport == TransportAuto || transport == TransportIOURing
	if wantURing {
		if ok, why := kernelOffersIOURing(); !ok {
			wantURing, s.whyNotIOURing = false, why
		} else if err := canServeIOURing(); err != nil {
			wantURing, s.whyNotIOURing = false, err.Error()
		} else {
			mo.ExtraCapabilities |= fuse.CAP_OVER_IO_URING
		}
	} else {
		s.whyNotIOURing = "transport=" + transport
	}

	s.dev, err = mountDevice(abs, &mo)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	s.fd = s.dev.fd
	if err := s.start(abs, raw, mo, wantURing); err != nil {
		// The connection is mounted but will not serve: take it
		// away; the loop, if it runs, ends with it and closes the fd.
		s.dev.unmount()
		if s.devLoop != nil {
			s.Wait()
		} else {
			closeFd(s.fd)
		}
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	return s, nil
}

// start answers INIT and starts the loops.
func (s *Server) start(mountpoint string, raw fuse.RawFileSystem, mo fuse.MountOptions, wantURing bool) error {
	var err error
	s.fuse, err = answerInit(s.fd, raw, mo)
	if err != nil {
		return err
	}
	s.protocol = fuse.NewProtocolServer(raw, &mo)
	if err := replayInit(s.protocol, s.fuse.KernelSettings(), s.bufSize); err != nil {
		return err
	}
	// The /dev/fuse loop runs with io_uring too: the kernel still
	// queues FORGET and INTERRUPT there.
	s.devLoop = newDevLoop(s)
	s.devLoop.start()
	// finish reads s.uring: it starts once the rings are in place (or
	// failed), also when the connection ends before they are.
	defer func() { go s.finish() }()
	if wantURing {
		if s.KernelSettings().Flags64()&fuse.CAP_OVER_IO_URING == 0 {
			s.whyNotIOURing = "the kernel did not grant FUSE_OVER_IO_URING in INIT"
		} else if err := s.startIOURing(); err != nil {
			return fmt.Errorf("io_uring granted but not started: %w", err)
		} else {
			s.transport = TransportIOURing
		}
	}
	// After the rings: with io_uring granted, requests wait for them.
	return refusePoll(mountpoint)
}

// finish waits for every loop to end, then lets go of the connection.
func (s *Server) finish() {
	s.devLoop.wait()
	// Ended as soon as no request can run: the io_uring threads, pinned
	// one per CPU, may take a while longer to leave.
	if s.uringServed() {
		s.endOnce.Do(s.ended)
	}
	s.waitIOURing()
	s.endOnce.Do(s.ended)
	if s.devLoop.endedByKernel() {
		// The connection is gone (reads return ENODEV), so
		// go-fuse's loop ends at once: serving it now only has it
		// close its copy of the fd and wake anything it had waiting.
		// Served while the connection lived, it would take requests.
		s.fuse.Serve()
	}
	closeFd(s.fd)
	close(s.served)
}

// handle serves one request: in holds it as read from the device (the
// fuse_in_header first, possibly split across slices), out receives the
// reply. It returns the reply's length, 0 when the request takes none
// (FORGET, BATCH_FORGET, an INTERRUPT that found its request).
func (s *Server) handle(in, out [][]byte) int {
	n, status := s.protocol.HandleRequest(in, out)
	if status.Ok() {
		return n
	}
	// The request could not be parsed, or its reply would not fit:
	// the kernel still waits for an answer to it.
	var header fuse.InHeader
	if readStream(asBytes(&header), in) < len(asBytes(&header)) {
		return 0 // not even a header: nothing to answer
	}
	switch header.Opcode {
	case opForget, opBatchForget:
		return 0
	}
	s.logger.Printf("request %d (opcode %d) answered %v", header.Unique, header.Opcode, status)
	reply := fuse.OutHeader{Status: -int32(status), Unique: header.Unique}
	reply.Length = uint32(len(asBytes(&reply)))
	return writeStream(out, asBytes(&reply))
}

// Opcodes of the requests the kernel expects no reply to.
const (
	opForget      = 2
	opBatchForget = 42
)

// asBytes is the memory of a wire struct.
func asBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// readStream fills dst from the start of the byte stream src and
// returns how much it filled.
func readStream(dst []byte, src [][]byte) int {
	n := 0
	for _, b := range src {
		n += copy(dst[n:], b)
	}
	return n
}

// writeStream writes src to the start of the byte stream dst and
// returns how much it wrote.
func writeStream(dst [][]byte, src []byte) int {
	n := 0
	for _, b := range dst {
		n += copy(b, src[n:])
	}
	return n
}

// Wait returns once the connection has ended (unmounted, or aborted) and
// every request has been answered.
func (s *Server) Wait() {
	<-s.served
}

// Unmount unmounts and waits until the connection has ended. It fails,
// leaving the mount serving, while the mount is busy. Once it has
// succeeded it returns nil.
func (s *Server) Unmount() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unmounted {
		return nil
	}
	if err := s.unmountOnce(); err != nil {
		select {
		case <-s.served:
			// The connection ended without us (aborted, or
			// unmounted from outside): nothing is left to stop.
			return nil
		default:
			return err
		}
	}
	s.unmounted = true
	s.Wait()
	return nil
}

func (s *Server) unmountOnce() error {
	if s.dev == nil {
		return s.fuse.Unmount() // the go-fuse transport
	}
	return s.dev.unmount()
}

// KernelSettings returns the kernel's INIT request.
func (s *Server) KernelSettings() *fuse.InitIn { return s.fuse.KernelSettings() }

// FUSEServer returns go-fuse's server for the connection (for notify
// calls; it answered INIT, and serves requests only in the go-fuse
// transport).
func (s *Server) FUSEServer() *fuse.Server { return s.fuse }

// Transport names what serves requests: "io_uring", "dev-fuse" or
// "go-fuse".
func (s *Server) Transport() string { return s.transport }

// WhyNotIOURing says why io_uring does not serve requests, or is empty
// when it does.
func (s *Server) WhyNotIOURing() string { return s.whyNotIOURing }

const pageSize = 4096

// closeFd closes fd. Its error is of no use: on Linux the fd is gone
// whatever close returns.
func closeFd(fd int) {
	unix.Close(fd)
}

// ReleaseIdleMemory gives back the buffers the connection holds only
// for requests to come. The daemon calls it when it comes to rest; a
// request that comes meanwhile is served as ever, its buffer's pages
// taken again as it touches them.
func (s *Server) ReleaseIdleMemory() {
	if s.devLoop != nil {
		s.devLoop.releaseIdle()
	}
}
