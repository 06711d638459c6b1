package unionfs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// implicitDirs lets the kernel read directories without opening them.
//
// Answering OPENDIR with ENOSYS tells the kernel (Linux 5.1 and later,
// which says so at INIT) to send no more OPENDIR and RELEASEDIR and to
// keep directory listings in its cache as if every open asked for it.
// That halves the requests of a tree walk: find over a tree the kernel
// has cached costs one GETATTR per directory instead of three requests.
// The directory reads that still come carry no handle; they are served
// from one handle per directory, opened at the first read and let go as
// soon as a read reaches the end with no other read of the directory
// under way. A walk of a tree therefore keeps no listing, where keeping
// each directory's until the kernel forgot the directory cost a daemon
// most of its memory (docs/benchmarks.md). A reader that goes on after
// its handle was let go is served by a new one from its offset, which
// names the same place in any listing (see dirHandle).
type implicitDirs struct {
	fuse.RawFileSystem

	// noOpendir is set at INIT, before any other request is read.
	noOpendir bool

	mu      sync.Mutex
	handles map[uint64]*implicitHandle // guarded by mu: by node id
}

// implicitHandle is a directory's handle in RawFileSystem.
type implicitHandle struct {
	fh uint64
	// users counts the requests using fh. Guarded by implicitDirs.mu.
	users int
}

func newImplicitDirs(inner fuse.RawFileSystem) *implicitDirs {
	return &implicitDirs{RawFileSystem: inner, handles: map[uint64]*implicitHandle{}}
}

func (d *implicitDirs) Init(s *fuse.Server) {
	d.noOpendir = s.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT != 0
	d.RawFileSystem.Init(s)
}

func (d *implicitDirs) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if d.noOpendir {
		return fuse.ENOSYS
	}
	return d.RawFileSystem.OpenDir(cancel, in, out)
}

func (d *implicitDirs) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	h, st := d.attach(cancel, &in.InHeader, &in.Fh)
	if !st.Ok() {
		return st
	}
	st = d.RawFileSystem.ReadDir(cancel, in, out)
	d.detach(in.NodeId, h, !st.Ok() || out.Offset == in.Offset)
	return st
}

func (d *implicitDirs) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	h, st := d.attach(cancel, &in.InHeader, &in.Fh)
	if !st.Ok() {
		return st
	}
	st = d.RawFileSystem.ReadDirPlus(cancel, in, out)
	// An empty reply is the end of the directory.
	d.detach(in.NodeId, h, !st.Ok() || out.Offset == in.Offset)
	return st
}

func (d *implicitDirs) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	h, st := d.attach(cancel, &in.InHeader, &in.Fh)
	if !st.Ok() {
		return st
	}
	st = d.RawFileSystem.FsyncDir(cancel, in)
	d.detach(in.NodeId, h, true)
	return st
}

// attach gives a request that came without a handle (*fh is 0: the
// directory was never opened) the directory's own handle, and returns
// it; nil for a request that came with its own.
func (d *implicitDirs) attach(cancel <-chan struct{}, h *fuse.InHeader, fh *uint64) (*implicitHandle, fuse.Status) {
	if *fh != 0 {
		return nil, fuse.OK
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if known, ok := d.handles[h.NodeId]; ok {
		known.users++
		*fh = known.fh
		return known, fuse.OK
	}
	var out fuse.OpenOut
	st := d.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: *h, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &out)
	if !st.Ok() {
		return nil, st
	}
	known := &implicitHandle{fh: out.Fh, users: 1}
	d.handles[h.NodeId] = known
	*fh = out.Fh
	return known, fuse.OK
}

// detach ends a request's use of handle h of node nodeID, and lets the
// handle go when done says the request leaves nothing to go on from and
// no other request uses it.
func (d *implicitDirs) detach(nodeID uint64, h *implicitHandle, done bool) {
	if h == nil {
		return
	}
	d.mu.Lock()
	h.users--
	release := done && h.users == 0 && d.handles[nodeID] == h
	if release {
		delete(d.handles, nodeID)
	}
	d.mu.Unlock()
	if release {
		d.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: nodeID}, Fh: h.fh})
	}
}

// heldHandles counts the directories whose handle is held.
func (d *implicitDirs) heldHandles() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.handles)
}

// Forget releases the handle of a directory the kernel has forgotten:
// no request for it can follow.
func (d *implicitDirs) Forget(nodeID, nlookup uint64) {
	d.mu.Lock()
	h, ok := d.handles[nodeID]
	delete(d.handles, nodeID)
	d.mu.Unlock()
	if ok {
		d.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: nodeID}, Fh: h.fh})
	}
	d.RawFileSystem.Forget(nodeID, nlookup)
}
