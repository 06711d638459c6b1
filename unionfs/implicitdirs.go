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
// from one handle per directory, opened at the first read and released
// when the kernel forgets the directory. Its listings keep offsets
// stable for readers that share it (see dirHandle).
type implicitDirs struct {
	fuse.RawFileSystem

	// noOpendir is set at INIT, before any other request is read.
	noOpendir bool

	mu      sync.Mutex
	handles map[uint64]uint64 // guarded by mu: node id to its handle in RawFileSystem
}

func newImplicitDirs(inner fuse.RawFileSystem) *implicitDirs {
	return &implicitDirs{RawFileSystem: inner, handles: map[uint64]uint64{}}
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
	if st := d.attach(cancel, &in.InHeader, &in.Fh); !st.Ok() {
		return st
	}
	return d.RawFileSystem.ReadDir(cancel, in, out)
}

func (d *implicitDirs) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if st := d.attach(cancel, &in.InHeader, &in.Fh); !st.Ok() {
		return st
	}
	return d.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (d *implicitDirs) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if st := d.attach(cancel, &in.InHeader, &in.Fh); !st.Ok() {
		return st
	}
	return d.RawFileSystem.FsyncDir(cancel, in)
}

// attach gives a request that came without a handle (*fh is 0: the
// directory was never opened) the directory's own handle.
func (d *implicitDirs) attach(cancel <-chan struct{}, h *fuse.InHeader, fh *uint64) fuse.Status {
	if *fh != 0 {
		return fuse.OK
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if known, ok := d.handles[h.NodeId]; ok {
		*fh = known
		return fuse.OK
	}
	var out fuse.OpenOut
	st := d.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: *h, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &out)
	if !st.Ok() {
		return st
	}
	d.handles[h.NodeId] = out.Fh
	*fh = out.Fh
	return fuse.OK
}

// Forget releases the handle of a directory the kernel has forgotten:
// no request for it can follow.
func (d *implicitDirs) Forget(nodeID, nlookup uint64) {
	d.mu.Lock()
	fh, ok := d.handles[nodeID]
	delete(d.handles, nodeID)
	d.mu.Unlock()
	if ok {
		d.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: nodeID}, Fh: fh})
	}
	d.RawFileSystem.Forget(nodeID, nlookup)
}
