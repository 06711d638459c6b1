package unionfs

import (
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// ioModeOrder keeps the choice between a passthrough and a daemon-served
// open (newHandle) in step with go-fuse's count of a node's backing-file
// users. go-fuse registers one backing file per inode at the first
// passthrough open and counts every open made while it exists, but it
// takes one off that count at every release, also of a handle opened
// daemon-served before the backing file existed. A release of such a
// handle that ran between the union's own release bookkeeping and
// go-fuse's let an open choose passthrough, register a backing file, and
// lose it to the release: the next open registered another, and the
// kernel, which allows one backing file per inode, failed it with EIO.
// Releases therefore run whole, alone, and opens (the choice and go-fuse's
// registration) never while one runs.
//
// It also gives a data change that passthrough readers of the lower file
// hold up (ETXTBSY, see passthrough.go) a second chance at each release,
// for up to lowerReadersGrace: a reader that closes right away, as a
// shell's cat before the next command writes, does not fail the writer.
// While such a change waits, new read-only opens of the node wait for it
// to end (done or given up): otherwise readers that come and go
// overlapping would keep the lower file open, and the change waiting,
// for ever. Nothing waits with a lock held, since the release a change
// waits for needs mu.
//
// Lock order: ioModeOrder.mu comes before every lock of the union (it is
// taken around whole requests); waitMu is a leaf.
type ioModeOrder struct {
	fuse.RawFileSystem
	mu sync.RWMutex

	waitMu sync.Mutex
	// released is closed at the next release (nil until asked for).
	released chan struct{} // guarded by waitMu
	// heldUp are the nodes with a data change waiting for lower
	// readers: how many changes wait, and a channel closed when none
	// does any more.
	heldUp map[uint64]*heldUpChanges // guarded by waitMu
}

type heldUpChanges struct {
	waiting int
	done    chan struct{}
}

// lowerReadersGrace is how long an open for writing or a truncation
// waits for passthrough readers of the lower file to close before it
// fails with ETXTBSY. Long enough for a reader that is closing, short
// enough that a caller which holds the file open itself (and so waits
// for nothing) gets its answer at once, to a person's eye.
const lowerReadersGrace = 100 * time.Millisecond

func (s *ioModeOrder) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Flags&syscall.O_ACCMODE == syscall.O_RDONLY && in.Flags&syscall.O_TRUNC == 0 {
		s.awaitHeldUpChanges(cancel, in.NodeId)
	}
	return s.retryWhileLowerReaders(cancel, in.NodeId, func() fuse.Status {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.RawFileSystem.Open(cancel, in, out)
	})
}

func (s *ioModeOrder) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.RawFileSystem.Create(cancel, in, name, out)
}

func (s *ioModeOrder) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.RawFileSystem.Tmpfile(cancel, in, out)
}

// SetAttr takes no lock: only its retry is ioModeOrder's business. A
// refused truncation changed nothing (Setattr checks first).
func (s *ioModeOrder) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	return s.retryWhileLowerReaders(cancel, in.NodeId, func() fuse.Status {
		return s.RawFileSystem.SetAttr(cancel, in, out)
	})
}

func (s *ioModeOrder) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	s.mu.Lock()
	s.RawFileSystem.Release(cancel, in)
	s.mu.Unlock()
	s.waitMu.Lock()
	if s.released != nil {
		close(s.released)
		s.released = nil
	}
	s.waitMu.Unlock()
}

// nextRelease returns a channel closed at the next release.
func (s *ioModeOrder) nextRelease() <-chan struct{} {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	if s.released == nil {
		s.released = make(chan struct{})
	}
	return s.released
}

// retryWhileLowerReaders runs try, and again after each release while it
// answers ETXTBSY, until lowerReadersGrace has passed or the kernel
// cancels the request; meanwhile node's new readers wait. The channel is
// taken before each try, so a release between the try and the wait is
// not missed.
func (s *ioModeOrder) retryWhileLowerReaders(cancel <-chan struct{}, node uint64, try func() fuse.Status) fuse.Status {
	var timeout <-chan time.Time
	for {
		released := s.nextRelease()
		st := try()
		if st != fuse.Status(syscall.ETXTBSY) {
			return st
		}
		if timeout == nil {
			t := time.NewTimer(lowerReadersGrace)
			defer t.Stop()
			timeout = t.C
			s.holdUpReaders(node)
			defer s.letReadersIn(node)
		}
		select {
		case <-released:
		case <-timeout:
			return st
		case <-cancel:
			return st
		}
	}
}

// holdUpReaders makes node's new readers wait (awaitHeldUpChanges) until
// a matching letReadersIn.
func (s *ioModeOrder) holdUpReaders(node uint64) {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	if s.heldUp == nil {
		s.heldUp = make(map[uint64]*heldUpChanges)
	}
	h := s.heldUp[node]
	if h == nil {
		h = &heldUpChanges{done: make(chan struct{})}
		s.heldUp[node] = h
	}
	h.waiting++
}

func (s *ioModeOrder) letReadersIn(node uint64) {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	h := s.heldUp[node]
	if h.waiting--; h.waiting == 0 {
		close(h.done)
		delete(s.heldUp, node)
	}
}

// awaitHeldUpChanges waits while a data change of node waits for lower
// readers: at most about lowerReadersGrace, as the change gives up then.
func (s *ioModeOrder) awaitHeldUpChanges(cancel <-chan struct{}, node uint64) {
	s.waitMu.Lock()
	h := s.heldUp[node]
	s.waitMu.Unlock()
	if h == nil {
		return
	}
	select {
	case <-h.done:
	case <-cancel:
	}
}
