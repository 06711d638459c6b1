package fuseloop

import (
	"errors"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// spareAfter is how long a request may run before a spare reader is
// started beside it. Most requests are answered well within it, and
// start nothing; one that waits (a lock, a slow layer, a notification
// the kernel holds back until another request is answered) must not
// keep the others waiting.
const spareAfter = 2 * time.Millisecond

// maxIdleReaders is how many exited readers' buffers are kept for the
// next spare.
const maxIdleReaders = 2

// devLoop serves requests read from /dev/fuse. One reader reads a
// request, handles it on its own thread and writes the reply: no
// goroutine hand-off and so no runtime wake-up between a request and its
// reply. More readers run only while requests block: a reader whose
// request has run spareAfter starts a spare if nobody is reading, and a
// reader that finishes a request while another is reading exits.
//
// There is always at least one reader until the connection ends: a
// reader exits only while another is counted waiting, and the counts
// change only under mu.
type devLoop struct {
	s *Server

	mu sync.Mutex
	// readers counts the live readers. Guarded by mu.
	readers int
	// waiting counts the readers not handling a request: reading, or
	// about to. Guarded by mu.
	waiting int
	// ended is set once a read has returned ENODEV (or failed for
	// good): the connection is over. Guarded by mu.
	ended bool
	// aborted is set when the connection ended as the kernel ends it
	// (ENODEV). Guarded by mu.
	aborted bool
	// idle holds the buffers of readers that have exited. Guarded by mu.
	idle []*reader
	// live holds the readers counted in readers. Guarded by mu.
	live map[*reader]struct{}
	// replyingAt finds a reader, live or idle, by where its reply
	// payload starts (see FileRead). Guarded by mu.
	replyingAt map[uintptr]*reader

	// done is closed when ended is set and readers is zero.
	done chan struct{}
}

// A reader is one reader goroutine's state.
type reader struct {
	loop    *devLoop
	in, out []byte // request and reply buffers: inBuf's and outBuf's data
	inBuf   pageBuffer
	outBuf  pageBuffer
	// splice, when set, is the data of the reply being built, still in
	// its file (see FileRead); pipe carries it, made on first use, and
	// noPipe says the system refused one. Used by the reader's own
	// goroutine only.
	splice fileRange
	pipe   *splicePipe
	noPipe bool
	inv    [][]byte // in, as HandleRequest takes it
	outv   [][]byte // out, as HandleRequest takes it
	timer  *time.Timer
	// busy is set while the reader handles a request that started at
	// started. Guarded by loop.mu.
	busy    bool
	started time.Time
}

func newDevLoop(s *Server) *devLoop {
	return &devLoop{s: s, done: make(chan struct{}), live: make(map[*reader]struct{}), replyingAt: make(map[uintptr]*reader)}
}

// start starts the first reader.
func (l *devLoop) start() {
	l.mu.Lock()
	r := l.newReaderLocked()
	l.countLocked(r)
	l.mu.Unlock()
	go l.run(r)
}

// countLocked counts r in as a live reader about to read.
// Preconditions: l.mu held.
func (l *devLoop) countLocked(r *reader) {
	l.readers++
	l.waiting++
	l.live[r] = struct{}{}
}

// wait returns once the connection has ended and every reader with it.
func (l *devLoop) wait() { <-l.done }

// endedByKernel reports whether the connection ended as the kernel ends
// it, rather than by a read error we did not expect.
func (l *devLoop) endedByKernel() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.aborted
}

// newReaderLocked returns a reader with buffers, reusing an exited
// one's. Preconditions: l.mu held.
func (l *devLoop) newReaderLocked() *reader {
	if n := len(l.idle); n > 0 {
		r := l.idle[n-1]
		l.idle = l.idle[:n-1]
		return r
	}
	r := &reader{loop: l}
	// A WRITE's data starts after its two headers and a READ's reply
	// data after one: put both on a page boundary, so a layer file
	// opened O_DIRECT can be written from and read into them.
	r.inBuf = newPageBuffer(l.s.bufSize, int(unsafe.Sizeof(fuse.WriteIn{})))
	r.outBuf = newPageBuffer(l.s.bufSize, int(unsafe.Sizeof(fuse.OutHeader{})))
	r.in, r.out = r.inBuf.data, r.outBuf.data
	l.replyingAt[r.replyPayloadAt()] = r
	r.inv = make([][]byte, 1)
	r.outv = [][]byte{r.out}
	r.timer = time.AfterFunc(time.Hour, func() { l.slow(r) })
	r.timer.Stop()
	return r
}

// run is one reader: read, handle, reply, until told to exit or the
// connection ends.
func (l *devLoop) run(r *reader) {
	// One thread for the reader: the request is handled where it was
	// read and the reply written from there, with no hand-off.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd := l.s.fd
	for {
		n, err := unix.Read(fd, r.in)
		switch {
		case err == nil:
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ENOENT):
			// The request was interrupted before we read it.
			continue
		case errors.Is(err, unix.ENODEV):
			l.exit(r, true)
			return
		default:
			l.s.logger.Printf("read from the FUSE device: %v (reader ends)", err)
			l.exit(r, false)
			return
		}
		l.begin(r)
		r.inv[0] = r.in[:n]
		r.splice = fileRange{}
		if size := l.s.handle(r.inv, r.outv); size > 0 {
			if r.splice.size > 0 {
				l.spliceReply(fd, r)
			} else {
				l.reply(fd, r.out[:size])
			}
		}
		if !l.finish(r) {
			return
		}
	}
}

// reply writes one reply to the device.
func (l *devLoop) reply(fd int, reply []byte) {
	for {
		_, err := unix.Write(fd, reply)
		switch {
		case err == nil:
			return
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV):
			// The request was interrupted and the kernel no
			// longer waits for it, or the connection ended (the
			// next read says so).
			return
		default:
			l.s.logger.Printf("write a reply to the FUSE device: %v", err)
			return
		}
	}
}

// begin marks r as handling a request and arms its timer.
func (l *devLoop) begin(r *reader) {
	l.mu.Lock()
	l.waiting--
	r.busy = true
	r.started = time.Now()
	r.timer.Reset(spareAfter)
	l.mu.Unlock()
}

// finish marks r's request done and says whether r reads again: it
// exits when another reader is reading already, or when the connection
// is over.
func (l *devLoop) finish(r *reader) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.busy = false
	r.timer.Stop()
	if l.ended || l.waiting > 0 {
		l.exitLocked(r)
		return false
	}
	l.waiting++
	return true
}

// exit ends reader r after a read failed; byKernel says the connection
// ended (ENODEV).
func (l *devLoop) exit(r *reader, byKernel bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.waiting--
	l.ended = true
	l.aborted = l.aborted || byKernel
	l.exitLocked(r)
}

// exitLocked counts r out. Preconditions: l.mu held; r is not counted
// waiting.
func (l *devLoop) exitLocked(r *reader) {
	l.readers--
	delete(l.live, r)
	if len(l.idle) < maxIdleReaders && !l.ended {
		l.idle = append(l.idle, r)
	} else {
		r.free()
	}
	if l.ended && l.readers == 0 {
		l.freeIdleLocked()
		close(l.done)
	}
}

// free unmaps r's buffers and closes its pipe. Preconditions: r.loop.mu
// held; r's goroutine uses them no more (it has exited, or is about to
// without touching them).
func (r *reader) free() {
	delete(r.loop.replyingAt, r.replyPayloadAt())
	r.dropPipe()
	r.inBuf.free()
	r.outBuf.free()
	r.in, r.out, r.inv[0], r.outv[0] = nil, nil, nil, nil
}

// freeIdleLocked unmaps the buffers kept for spares. Preconditions:
// l.mu held.
func (l *devLoop) freeIdleLocked() {
	for _, r := range l.idle {
		r.free()
	}
	l.idle = nil
}

// releaseIdle gives back what the loop holds only for work to come: the
// buffers kept for spare readers, and the reply buffers of the readers
// waiting for a request. A waiting reader's request buffer stays: the
// kernel may be writing the next request into it.
func (l *devLoop) releaseIdle() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.freeIdleLocked()
	for r := range l.live {
		if !r.busy {
			// Its reply buffer is touched only after begin, which
			// waits for l.mu.
			r.outBuf.release()
		}
	}
}

// slow runs when r's request has run for spareAfter: if nobody reads
// the device meanwhile, it starts a spare reader.
func (l *devLoop) slow(r *reader) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !r.busy || l.ended || l.waiting > 0 {
		return
	}
	if left := spareAfter - time.Since(r.started); left > 0 {
		// Armed for an earlier request that finished just before
		// this one started.
		r.timer.Reset(left)
		return
	}
	spare := l.newReaderLocked()
	l.countLocked(spare)
	go l.run(spare)
}
