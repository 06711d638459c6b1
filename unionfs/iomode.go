package unionfs

import (
	"sync"

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
// Lock order: ioModeOrder.mu comes before every lock of the union (it is
// taken around whole requests).
type ioModeOrder struct {
	fuse.RawFileSystem
	mu sync.RWMutex
}

func (s *ioModeOrder) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.RawFileSystem.Open(cancel, in, out)
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

func (s *ioModeOrder) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.RawFileSystem.Release(cancel, in)
}
