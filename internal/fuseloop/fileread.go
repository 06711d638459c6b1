package fuseloop

import (
	"errors"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FileRead answers a READ with size bytes of the file fd at off. On the
// /dev/fuse loop the reply goes from the file to the device through a
// pipe (splice): the data is copied once, in the kernel, where a read
// into the reply buffer copies it twice. Elsewhere (io_uring, whose
// replies live in the ring's buffers) it is read into the reply buffer.
// fd must stay open until the request is answered.
func (s *Server) FileRead(fd int, off int64, size int) fuse.ReadResult {
	return &fileRead{s: s, fd: fd, off: off, size: size}
}

// fileRead is FileRead's result. go-fuse's ProtocolServer calls Readv
// with the reply buffer's payload; when that buffer is a /dev/fuse
// reader's, Readv leaves the data to the reader's splice.
type fileRead struct {
	s    *Server
	fd   int
	off  int64
	size int
}

func (r *fileRead) Size() int { return r.size }
func (r *fileRead) Done()     {}

func (r *fileRead) Bytes(buf []byte) ([]byte, fuse.Status) {
	n, err := unix.Pread(r.fd, buf[:min(len(buf), r.size)], r.off)
	if err != nil {
		return nil, fuse.ToStatus(err)
	}
	return buf[:n], fuse.OK
}

// Readv fills dst, or has the reader whose reply buffer dst is splice
// the data after the reply's header.
func (r *fileRead) Readv(dst [][]byte) (int, fuse.Status) {
	if rd := r.s.readerReplyingInto(dst); rd != nil && rd.canSplice(r.off, r.size) {
		rd.splice = fileRange{fd: r.fd, off: r.off, size: r.size}
		return r.size, fuse.OK
	}
	n, err := preadvFull(r.fd, dst, r.size, r.off)
	if err != nil {
		return 0, fuse.ToStatus(err)
	}
	return n, fuse.OK
}

// preadvFull reads up to size bytes at off into the start of dst.
func preadvFull(fd int, dst [][]byte, size int, off int64) (int, error) {
	var iov [][]byte
	for _, b := range dst {
		if size <= 0 {
			break
		}
		b = b[:min(len(b), size)]
		iov = append(iov, b)
		size -= len(b)
	}
	if len(iov) == 0 {
		return 0, nil
	}
	for {
		n, err := unix.Preadv(fd, iov, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return max(n, 0), err
	}
}

// fileRange is a reply's data still in its file.
type fileRange struct {
	fd   int
	off  int64
	size int // 0: none
}

// readerReplyingInto returns the /dev/fuse reader whose reply payload
// dst is, or nil.
func (s *Server) readerReplyingInto(dst [][]byte) *reader {
	if s.devLoop == nil || len(dst) == 0 || len(dst[0]) == 0 {
		return nil
	}
	at := uintptr(unsafe.Pointer(&dst[0][0]))
	l := s.devLoop
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.replyingAt[at]
}

// replyPayloadAt is where a reader's reply data starts: after the
// reply's header.
func (r *reader) replyPayloadAt() uintptr {
	return uintptr(unsafe.Pointer(&r.out[0])) + unsafe.Sizeof(fuse.OutHeader{})
}

// A splicePipe carries one reply: its header, then its data.
type splicePipe struct {
	r, w  int
	slots int // how many buffers (pages) the pipe holds
}

// canSplice reports whether a reply of size bytes read at off fits the
// reader's pipe, making the pipe on first use. Each page of the file the
// data touches takes a pipe buffer, and the header one more; a reply
// that does not fit is copied instead, so a splice never waits for room.
func (r *reader) canSplice(off int64, size int) bool {
	if r.pipe == nil {
		r.pipe = newSplicePipe(r.loop.s.bufSize + pageSize)
		if r.pipe == nil {
			r.noPipe = true
		}
	}
	if r.noPipe || r.pipe == nil {
		return false
	}
	pages := (int(off%pageSize) + size + pageSize - 1) / pageSize
	return 1+pages <= r.pipe.slots
}

// newSplicePipe returns a pipe holding at least bytes, or nil where the
// system will not give one that large (a user over its pipe quota).
func newSplicePipe(bytes int) *splicePipe {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil
	}
	got, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, bytes)
	if err != nil || got < bytes {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil
	}
	return &splicePipe{r: fds[0], w: fds[1], slots: got / pageSize}
}

func (p *splicePipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// drain empties the pipe into buf (whose length is what the pipe
// holds), so the next reply starts clean.
func (p *splicePipe) drain(buf []byte) error {
	for len(buf) > 0 {
		n, err := unix.Read(p.r, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("pipe ended")
		}
		buf = buf[n:]
	}
	return nil
}

// spliceReply answers r's request, whose header is r.out[:headerLen],
// with the data of r.splice: the header into the pipe, the data from the
// file into the pipe, the pipe into the device. Where the file gives
// less than asked (it shrank meanwhile), the reply is rebuilt in the
// reply buffer with what there is and written as usual.
func (l *devLoop) spliceReply(devFd int, r *reader) {
	src := r.splice
	r.splice = fileRange{}
	const headerLen = int(unsafe.Sizeof(fuse.OutHeader{}))
	p := r.pipe
	if !l.writeAll(p.w, r.out[:headerLen]) {
		l.copyReply(devFd, r, src, 0)
		return
	}
	moved, off := 0, src.off
	for moved < src.size {
		n, err := unix.Splice(src.fd, &off, p.w, nil, src.size-moved, unix.SPLICE_F_MOVE)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			break
		}
		moved += int(n)
	}
	if moved < src.size {
		l.copyReply(devFd, r, src, moved)
		return
	}
	total := headerLen + src.size
	for {
		n, err := unix.Splice(p.r, nil, devFd, nil, total, unix.SPLICE_F_MOVE)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err == nil && int(n) == total:
			l.s.splicedReplies.Add(1)
			return
		case err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV):
			l.s.logger.Printf("splice a reply to the FUSE device: %v", err)
		}
		// Interrupted, the connection gone, or a part taken: what is
		// left must not start the next reply.
		held, _ := unix.IoctlGetInt(p.r, unix.TIOCINQ) // FIONREAD
		if held > 0 {
			scratch := make([]byte, held)
			if p.drain(scratch) != nil {
				r.dropPipe()
			}
		}
		return
	}
}

// copyReply answers r's request from the reply buffer after a splice
// that could not be completed: what the pipe holds (the header and the
// first moved bytes of data) is taken back out of it, the rest read from
// the file, and the header's length set to what was read.
func (l *devLoop) copyReply(devFd int, r *reader, src fileRange, moved int) {
	const headerLen = int(unsafe.Sizeof(fuse.OutHeader{}))
	held, _ := unix.IoctlGetInt(r.pipe.r, unix.TIOCINQ) // FIONREAD
	if held > 0 && r.pipe.drain(r.out[:held]) != nil {
		r.dropPipe()
	}
	n := moved
	if rest, err := preadvFull(src.fd, [][]byte{r.out[headerLen+moved:]}, src.size-moved, src.off+int64(moved)); err == nil {
		n += rest
	}
	header := (*fuse.OutHeader)(unsafe.Pointer(&r.out[0]))
	header.Length = uint32(headerLen + n)
	l.s.repliesCopiedAfterSplice.Add(1)
	l.reply(devFd, r.out[:headerLen+n])
}

// writeAll writes b to the pipe whole (canSplice made sure of room).
func (l *devLoop) writeAll(fd int, b []byte) bool {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		b = b[n:]
	}
	return true
}

// dropPipe closes a pipe whose content is no longer known; the next
// splice makes a new one.
func (r *reader) dropPipe() {
	if r.pipe != nil {
		r.pipe.close()
		r.pipe = nil
	}
}
