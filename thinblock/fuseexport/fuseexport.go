// Package fuseexport serves the volumes of a thin pool as regular files
// over FUSE, one per volume, named by id, so that losetup turns a volume
// into a real block device: reads and writes go to the pool, fsync
// commits, fallocate(PUNCH_HOLE) discards, and SEEK_DATA/SEEK_HOLE
// report the provisioned ranges.
package fuseexport

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/thinblock"
)

// Options tune the export.
type Options struct {
	// ReadOnly exports every volume read-only.
	ReadOnly bool
	// WritableSnapshots exports writable the snapshots made before
	// volumes had attributes (read-only by default then); a volume made
	// since is read-only when it was made so.
	WritableSnapshots bool
	Debug             bool
	Logger            *log.Logger
}

type root struct {
	fs.Inode
	p    *thinblock.Pool
	opts Options

	mu    sync.Mutex // guards files, gen; held across a refresh
	files map[uint64]*volumeFile
	gen   uint64 // inode generation: a recreated id is a new file
}

var _ fs.NodeOnAdder = (*root)(nil)

// OnAdd adds one file per volume.
func (r *root) OnAdd(ctx context.Context) {
	if err := r.refresh(ctx); err != nil && r.opts.Logger != nil {
		r.opts.Logger.Printf("list volumes: %v", err)
	}
}

// refresh makes the directory list the pool's volumes: a file for each
// new one, and none for a deleted one (the kernel is told to forget its
// name; a file still open reads and writes with errors from then on).
func (r *root) refresh(ctx context.Context) error {
	vols, err := r.p.VolumesBrief() // no walk of the mappings
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.files == nil {
		r.files = map[uint64]*volumeFile{}
	}
	present := map[uint64]bool{}
	for _, vi := range vols {
		present[vi.ID] = true
		if f, ok := r.files[vi.ID]; ok {
			// An attribute may have changed (thinblock set --read-only).
			f.readOnly.Store(r.opts.ReadOnly || vi.ExportReadOnly(r.opts.WritableSnapshots))
			continue
		}
		v, err := r.p.Volume(vi.ID)
		if err != nil {
			continue // deleted meanwhile
		}
		n := &volumeFile{p: r.p, v: v, size: vi.Size, mtime: uint64(time.Now().Unix())}
		n.readOnly.Store(r.opts.ReadOnly || vi.ExportReadOnly(r.opts.WritableSnapshots))
		r.gen++
		child := r.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: vi.ID + 2, Gen: r.gen})
		r.AddChild(strconv.FormatUint(vi.ID, 10), child, false)
		r.files[vi.ID] = n
	}
	for id := range r.files {
		if present[id] {
			continue
		}
		name := strconv.FormatUint(id, 10)
		delete(r.files, id)
		r.RmChild(name)
		// Not while mounting: the kernel has no entry then.
		r.NotifyEntry(name)
	}
	return nil
}

// Export is a mounted export.
type Export struct {
	*fuse.Server
	root *root
}

// Refresh brings the files in line with the pool's volumes, after
// volumes were created or deleted while serving.
func (e *Export) Refresh() error { return e.root.refresh(context.Background()) }

// Opens reports how many times volume id's file is open (a loop device
// over it holds it open too).
func (e *Export) Opens(id uint64) int {
	e.root.mu.Lock()
	f := e.root.files[id]
	e.root.mu.Unlock()
	if f == nil {
		return 0
	}
	return int(f.opens.Load())
}

// Mount serves pool's volumes in dir until the returned server is
// unmounted.
func Mount(dir string, p *thinblock.Pool, opts Options) (*Export, error) {
	timeout := time.Second
	fsopts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName: "thinblock", Name: "thinblock", Debug: opts.Debug,
			MaxWrite: 1 << 20, Options: []string{"default_permissions"},
			AllowOther: true, DirectMount: true, Logger: opts.Logger,
		},
		EntryTimeout: &timeout, AttrTimeout: &timeout,
	}
	r := &root{p: p, opts: opts}
	srv, err := fs.Mount(dir, r, fsopts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	return &Export{Server: srv, root: r}, nil
}

// volumeFile is one volume as a file.
type volumeFile struct {
	fs.Inode
	p        *thinblock.Pool
	v        *thinblock.Volume
	size     uint64
	readOnly atomic.Bool
	mtime    uint64 // when the export started
	opens    atomic.Int32
}

// handle is an open of a volume file: it holds the volume (Pool.Hold),
// so a delete is refused while the file is open, and counts the opens
// for naming who holds it.
type handle struct {
	f    *volumeFile
	hold *thinblock.Hold
}

var _ fs.FileReleaser = (*handle)(nil)

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.f.opens.Add(-1)
	h.hold.Release()
	return 0
}

var (
	_ fs.NodeGetattrer = (*volumeFile)(nil)
	_ fs.NodeSetattrer = (*volumeFile)(nil)
	_ fs.NodeOpener    = (*volumeFile)(nil)
	_ fs.NodeReader    = (*volumeFile)(nil)
	_ fs.NodeWriter    = (*volumeFile)(nil)
	_ fs.NodeFsyncer   = (*volumeFile)(nil)
	_ fs.NodeAllocater = (*volumeFile)(nil)
	_ fs.NodeLseeker   = (*volumeFile)(nil)
	_ fs.NodeFlusher   = (*volumeFile)(nil)
)

// errno converts a pool error for the FUSE boundary.
func errno(err error) syscall.Errno { return sysx.Errno(err) }

func (f *volumeFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o644
	if f.readOnly.Load() {
		out.Mode = syscall.S_IFREG | 0o444
	}
	out.Size = f.size
	out.Nlink = 1
	out.Blksize = 4096
	out.Mtime, out.Ctime, out.Atime = f.mtime, f.mtime, f.mtime
	// One device-tree lookup, not a walk of every volume's mappings.
	if d, err := f.p.Details(f.v.ID()); err == nil {
		out.Blocks = d.Mapped * f.p.BlockSize() / 512
	}
	return 0
}

// Setattr accepts a same-size truncate and time changes (which losetup
// and tools make), and refuses resizing: a volume's size is fixed.
func (f *volumeFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok && size != f.size {
		return syscall.EPERM
	}
	return f.Getattr(ctx, fh, out)
}

func (f *volumeFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.readOnly.Load() && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	// The claim and the check that the volume exists are one step, so
	// an open racing a delete holds it or finds it gone.
	h, err := f.p.Hold(f.v.ID(), holderName(ctx))
	if errors.Is(err, thinblock.ErrNoVolume) {
		return nil, 0, syscall.ENOENT
	}
	if err != nil {
		return nil, 0, errno(err)
	}
	f.opens.Add(1)
	return &handle{f: f, hold: h}, 0, 0
}

// holderName names the process opening a file, for a refused delete.
func holderName(ctx context.Context) string {
	if c, ok := fuse.FromContext(ctx); ok {
		return fmt.Sprintf("process %d through the FUSE export", c.Pid)
	}
	return "an open through the FUSE export"
}

func (f *volumeFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off < 0 || uint64(off) >= f.size {
		return fuse.ReadResultData(nil), 0
	}
	n := min(uint64(len(dest)), f.size-uint64(off))
	if _, err := f.v.ReadAt(dest[:n], off); err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *volumeFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if f.readOnly.Load() {
		return 0, syscall.EROFS
	}
	if off < 0 || uint64(off)+uint64(len(data)) > f.size {
		return 0, syscall.EFBIG
	}
	if _, err := f.v.Write(data, off); err != nil {
		return 0, errno(err)
	}
	return uint32(len(data)), 0
}

// Fsync commits the pool: every completed write becomes durable.
func (f *volumeFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return errno(f.p.Commit())
}

func (f *volumeFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

// Allocate handles PUNCH_HOLE (discard) and ZERO_RANGE; reserving space
// in a thin volume is not possible, so plain allocation is refused.
func (f *volumeFile) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if f.readOnly.Load() {
		return syscall.EROFS
	}
	if off+size > f.size {
		size = f.size - min(off, f.size)
	}
	switch {
	case mode&unix.FALLOC_FL_PUNCH_HOLE != 0:
		return errno(f.v.Discard(int64(off), int64(size)))
	case mode&unix.FALLOC_FL_ZERO_RANGE != 0:
		return errno(f.v.ZeroRange(int64(off), int64(size), false))
	}
	return syscall.EOPNOTSUPP
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the volume's mappings.
func (f *volumeFile) Lseek(ctx context.Context, fh fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	if off >= f.size {
		return 0, syscall.ENXIO
	}
	exts, err := f.v.Extents(int64(off), int64(f.size-off))
	if err != nil {
		return 0, errno(err)
	}
	pos := off
	for _, e := range exts {
		if (whence == unix.SEEK_DATA) == !e.Hole {
			return pos, 0
		}
		pos += e.Length
	}
	if whence == unix.SEEK_HOLE {
		return f.size, 0 // the end of a file counts as a hole
	}
	return 0, syscall.ENXIO
}
