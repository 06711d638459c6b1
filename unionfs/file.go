package unionfs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// file is an open union file. It wraps go-fuse's loopback file over the
// real fd. A file opened read-only on a lower layer switches to the upper
// copy once the node has been copied up, so readers see later writes.
type file struct {
	n *node

	mu          sync.RWMutex
	inner       fs.FileHandle // guarded by mu
	fd          int           // guarded by mu
	flags       int
	onLower     bool // guarded by mu
	passthrough bool
	// dropPrivileges is set when the file had set-id bits or
	// capabilities at open: every write clears them (see killpriv.go),
	// as they may come back by a chmod while the file is open.
	dropPrivileges bool
}

var (
	_ fs.FileReader          = (*file)(nil)
	_ fs.FileWriter          = (*file)(nil)
	_ fs.FileGetattrer       = (*file)(nil)
	_ fs.FileReleaser        = (*file)(nil)
	_ fs.FileFlusher         = (*file)(nil)
	_ fs.FileFsyncer         = (*file)(nil)
	_ fs.FileLseeker         = (*file)(nil)
	_ fs.FileAllocater       = (*file)(nil)
	_ fs.FileGetlker         = (*file)(nil)
	_ fs.FileSetlker         = (*file)(nil)
	_ fs.FileSetlkwer        = (*file)(nil)
	_ fs.FilePassthroughFder = (*file)(nil)
)

func newFile(n *node, fd, flags int, onLower, passthrough bool) *file {
	return &file{n: n, inner: fs.NewLoopbackFile(fd), fd: fd, flags: flags, onLower: onLower, passthrough: passthrough}
}

// current returns the handle to use, switching a lower read-only handle
// to the upper copy after a copy-up.
func (f *file) current() fs.FileHandle {
	f.mu.RLock()
	inner, onLower := f.inner, f.onLower
	f.mu.RUnlock()
	if !onLower || !f.n.copiedUp.Load() {
		return inner
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.onLower {
		return f.inner
	}
	u := f.n.ufs
	u.ns.RLock()
	fd, err := u.upper.open(f.n.path(), unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	u.ns.RUnlock()
	if err != nil {
		// The upper copy went away (unlinked): keep reading the old one.
		return f.inner
	}
	if r, ok := f.inner.(fs.FileReleaser); ok {
		r.Release(context.Background())
	}
	f.inner, f.fd, f.onLower = fs.NewLoopbackFile(fd), fd, false
	return f.inner
}

func (f *file) PassthroughFd() (int, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.passthrough || f.onLower {
		return -1, false
	}
	return f.fd, true
}

// spliceReadMin is the smallest read answered by splicing from the file
// to the FUSE device: splice costs two syscalls and a pipe, which pays
// for itself on readahead-sized reads but doubles the cost of a 4 KiB
// one (random 4 KiB reads ran 1.6x faster copied through a buffer).
const spliceReadMin = 32 << 10

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.n.ufs.daemonReads.Add(1)
	inner := f.current()
	if len(dest) >= spliceReadMin {
		return inner.(fs.FileReader).Read(ctx, dest, off)
	}
	// Under the read lock current() cannot close the fd mid-read.
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, err := unix.Pread(f.fd, dest, off)
	if err != nil {
		return nil, syscall.Errno(err.(unix.Errno))
	}
	// A vector result goes to the device in one writev; go-fuse tries
	// its splice path first for plain data results, which costs three
	// more syscalls per reply to find it cannot splice them.
	return fuse.ReadResultVector([][]byte{dest[:n]}), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	inner := f.current()
	if f.dropPrivileges {
		f.mu.RLock()
		err := dropPrivileges(f.fd, "", callerPrivileged(ctx))
		f.mu.RUnlock()
		if err != nil {
			return 0, f.n.ufs.errno(err)
		}
	}
	return inner.(fs.FileWriter).Write(ctx, data, off)
}

func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	inner := f.current()
	f.mu.RLock()
	onLower := f.onLower
	f.mu.RUnlock()
	if onLower && f.n.state().metacopy {
		// The lower fd has the data, the upper copy the metadata. No
		// ns here: Setattr calls this holding it.
		return f.n.getattr(nil, out)
	}
	errno := inner.(fs.FileGetattrer).Getattr(ctx, out)
	if errno == 0 {
		out.Ino = f.n.StableAttr().Ino
		f.mu.RLock()
		f.n.ufs.applyOverrideFd(f.fd, &out.Attr)
		f.mu.RUnlock()
		f.n.ufs.adjustAttr(&out.Attr)
	}
	return errno
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	f.n.mu.Lock()
	if f.passthrough {
		f.n.passthroughOpens--
	} else {
		f.n.cachedOpens--
	}
	f.n.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inner.(fs.FileReleaser).Release(ctx)
}

// Flush answers ENOSYS, which tells the kernel never to send FLUSH on
// this mount again: a close then costs no round trip. The union has
// nothing to do at close: every write reached the layer file before it
// was answered, and the kernel releases a closing process's locks with
// its own unlock request.
func (f *file) Flush(ctx context.Context) syscall.Errno {
	return syscall.ENOSYS
}

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return f.current().(fs.FileFsyncer).Fsync(ctx, flags)
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return f.current().(fs.FileLseeker).Lseek(ctx, off, whence)
}

func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return f.current().(fs.FileAllocater).Allocate(ctx, off, size, mode)
}

func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	return f.current().(fs.FileGetlker).Getlk(ctx, owner, lk, flags, out)
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.current().(fs.FileSetlker).Setlk(ctx, owner, lk, flags)
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.current().(fs.FileSetlkwer).Setlkw(ctx, owner, lk, flags)
}

// setattrFd applies size changes through the open fd, which works even
// after the name was unlinked. It returns false when the handle cannot
// (a read-only lower handle).
func (f *file) truncate(size uint64) (bool, syscall.Errno) {
	f.current()
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.onLower || f.flags&unix.O_ACCMODE == unix.O_RDONLY {
		return false, 0
	}
	if err := unix.Ftruncate(f.fd, int64(size)); err != nil {
		return true, syscall.Errno(err.(unix.Errno))
	}
	return true, 0
}
