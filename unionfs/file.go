package unionfs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// file is an open union file over the real fd of a layer file. A file
// opened read-only on a lower layer switches to the upper copy once the
// node has been copied up, so readers see later writes; where the kernel
// reads the lower file itself (passthrough), the node's data cannot
// change while the handle is open (see passthrough.go), and the switch
// only moves the requests the daemon still gets (fstat, locks, lseek). It serves
// requests on the fd itself: go-fuse's loopback file would wrap each fd
// in an os.File, two more syscalls (fcntl, epoll_ctl) per open.
type file struct {
	n *node

	mu      sync.RWMutex
	fd      int   // guarded by mu
	retired []int // guarded by mu: lower fds switched away from, closed at release
	flags   int
	onLower bool // guarded by mu
	// passthrough is set when the kernel reads and writes the fd
	// itself.
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
	return &file{n: n, fd: fd, flags: flags, onLower: onLower, passthrough: passthrough}
}

// current returns the fd to use, switching a lower read-only handle to
// the upper copy after a copy-up. The fd stays open until Release (a
// splice may still read the old one after a switch).
//
// Preconditions: the caller does not hold ns (see currentNsHeld).
func (f *file) current() int {
	if fd, done := f.fastCurrent(); done {
		return fd
	}
	u := f.n.ufs
	u.ns.RLock()
	defer u.ns.RUnlock()
	return f.switchToUpperNsHeld()
}

// currentNsHeld is current for a caller that holds ns (Setattr).
//
// Preconditions: ns is held, for reading or writing.
func (f *file) currentNsHeld() int {
	if fd, done := f.fastCurrent(); done {
		return fd
	}
	return f.switchToUpperNsHeld()
}

// fastCurrent returns the fd when no switch is due, without ns.
func (f *file) fastCurrent() (fd int, done bool) {
	f.mu.RLock()
	fd, onLower := f.fd, f.onLower
	f.mu.RUnlock()
	return fd, !onLower || !f.n.copiedUp.Load()
}

// switchToUpperNsHeld moves the handle to the upper copy. ns is taken
// before file.mu (the package's lock order), and held so that the
// node's path names the copy that was made.
//
// Preconditions: ns is held.
func (f *file) switchToUpperNsHeld() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.onLower {
		return f.fd
	}
	ref, _ := f.n.ufs.top(f.n.state(), f.n.path())
	upperFd, err := ref.l.open(ref.path, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		// The upper copy went away (unlinked): keep reading the old one.
		return f.fd
	}
	f.retired = append(f.retired, f.fd)
	f.fd, f.onLower = upperFd, false
	return f.fd
}

// PassthroughFd gives go-fuse the fd to register as the node's backing
// file at the node's first passthrough open: the upper file, or for a
// read-only open of a lower one the lower file (see passthrough.go).
func (f *file) PassthroughFd() (int, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.passthrough {
		return -1, false
	}
	return f.fd, true
}

// spliceReadMin is the smallest read answered by splicing from the file
// to the FUSE device rather than copied through a buffer. go-fuse's
// splice costs six syscalls (header into the pipe, file to pipe, pipe to
// device, draining the pipe) where a copy costs two, which only pays on
// the largest reads (docs/measurements.md).
const spliceReadMin = 256 << 10

// loopSpliceMin is the smallest read the project's own /dev/fuse loop
// answers from the layer file by splice (fuseloop.FileRead): one copy of
// the data in the kernel, for two more system calls than a read into the
// reply buffer and a write of it, which copy the data twice. Without root
// every read of a lower file is a 128 KiB request.
const loopSpliceMin = 64 << 10

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.n.ufs.daemonReads.Add(1)
	fd := f.current()
	if srv := f.n.ufs.splicer.Load(); srv != nil {
		if len(dest) < loopSpliceMin {
			return f.readCopy(fd, dest, off)
		}
		size, errno := sizeToEOF(fd, len(dest), off)
		if errno != 0 || size <= 0 {
			return fuse.ReadResultData(nil), errno
		}
		return srv.FileRead(fd, off, size), 0
	}
	if len(dest) >= spliceReadMin {
		// go-fuse's loop splices a file result; cut at the end of
		// the file, or it redoes the splice through a second pipe.
		size, errno := sizeToEOF(fd, len(dest), off)
		if errno != 0 || size <= 0 {
			return fuse.ReadResultData(nil), errno
		}
		return fuse.ReadResultFd(uintptr(fd), off, size), 0
	}
	return f.readCopy(fd, dest, off)
}

// sizeToEOF cuts a read of size bytes at off at the end of the file: the
// kernel asks for whole pages, and a splice that comes up short costs a
// second try (one fstat costs less).
func sizeToEOF(fd, size int, off int64) (int, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, sysx.Errno(err)
	}
	return int(min(int64(size), st.Size-off)), 0
}

// readCopy answers a read by reading into dest.
func (f *file) readCopy(fd int, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := unix.Pread(fd, dest, off)
	if err != nil {
		return nil, sysx.Errno(err)
	}
	// A vector result goes to the device in one writev; go-fuse tries
	// its splice path first for plain data results, which costs three
	// more syscalls per reply to find it cannot splice them.
	return fuse.ReadResultVector([][]byte{dest[:n]}), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	fd := f.current()
	if f.dropPrivileges {
		if err := dropPrivileges(fd, "", callerPrivileged(ctx)); err != nil {
			return 0, f.n.ufs.errno(err)
		}
	}
	n, err := unix.Pwrite(fd, data, off)
	if err != nil {
		return 0, sysx.Errno(err)
	}
	return uint32(n), 0
}

// Getattr is fstat of the open file.
//
// Preconditions: the caller does not hold ns (see getattrNsHeld).
func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	if f.metadataElsewhere() {
		u := f.n.ufs
		u.ns.RLock()
		defer u.ns.RUnlock()
		return f.n.getattr(out)
	}
	return f.fstat(f.current(), out)
}

// getattrNsHeld is Getattr for a caller that holds ns (Setattr).
//
// Preconditions: ns is held.
func (f *file) getattrNsHeld(out *fuse.AttrOut) syscall.Errno {
	if f.metadataElsewhere() {
		return f.n.getattr(out)
	}
	return f.fstat(f.currentNsHeld(), out)
}

// metadataElsewhere reports whether the handle reads a metadata-only
// file's data below while its metadata lives in the upper copy.
func (f *file) metadataElsewhere() bool {
	f.mu.RLock()
	onLower := f.onLower
	f.mu.RUnlock()
	return onLower && f.n.state().metacopy
}

// fstat fills out from the open layer file fd.
func (f *file) fstat(fd int, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return sysx.Errno(err)
	}
	// As node.getattr: the recorded owner and mode first, then what
	// the mount's options show of them.
	out.Attr.FromStat(toSyscallStat(&st))
	f.n.ufs.showIndexNlinkFd(f.n, fd, &out.Attr.Nlink, out.Attr.Mode)
	f.n.ufs.applyOverrideFd(fd, &out.Attr)
	f.n.ufs.adjustAttr(&out.Attr)
	out.Ino = f.n.StableAttr().Ino
	return 0
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	f.n.mu.Lock()
	if f.passthrough {
		f.n.passthroughOpens--
		if f.n.passthroughOpens == 0 {
			f.n.lowerBacking = false
		}
	} else {
		f.n.cachedOpens--
	}
	delete(f.n.openFiles, f)
	if len(f.n.openFiles) == 0 {
		// An emptied map keeps its buckets: a tree read once would
		// keep one per file it opened.
		f.n.openFiles = nil
	}
	f.n.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fd := range f.retired {
		unix.Close(fd)
	}
	f.retired = nil
	return sysx.Errno(unix.Close(f.fd))
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
	if flags&fsyncDataOnly != 0 {
		return sysx.Errno(unix.Fdatasync(f.current()))
	}
	return sysx.Errno(unix.Fsync(f.current()))
}

// fsyncDataOnly is FUSE_FSYNC_FDATASYNC: fdatasync(2) was called.
const fsyncDataOnly = 1

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(f.current(), int64(off), int(whence))
	return uint64(n), sysx.Errno(err)
}

func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return sysx.Errno(unix.Fallocate(f.current(), mode, int64(off), int64(size)))
}

// Locks are open file description locks on the layer file (one fd per
// union open, as the kernel keeps one description per open), or flock
// locks where the caller used flock(2).

func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	var flk syscall.Flock_t
	lk.ToFlockT(&flk)
	if err := syscall.FcntlFlock(uintptr(f.current()), unix.F_OFD_GETLK, &flk); err != nil {
		return sysx.Errno(err)
	}
	out.FromFlockT(&flk)
	return 0
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.lock(lk, flags, false)
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.lock(lk, flags, true)
}

func (f *file) lock(lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	fd := f.current()
	if flags&fuse.FUSE_LK_FLOCK != 0 {
		var how int
		switch lk.Typ {
		case syscall.F_RDLCK:
			how = unix.LOCK_SH
		case syscall.F_WRLCK:
			how = unix.LOCK_EX
		case syscall.F_UNLCK:
			how = unix.LOCK_UN
		default:
			return syscall.EINVAL
		}
		if !wait {
			how |= unix.LOCK_NB
		}
		return sysx.Errno(unix.Flock(fd, how))
	}
	var flk syscall.Flock_t
	lk.ToFlockT(&flk)
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	return sysx.Errno(syscall.FcntlFlock(uintptr(fd), cmd, &flk))
}

// truncate applies a size change through the open fd, which works even
// after the name was unlinked. It returns false when the handle cannot
// (a read-only lower handle).
//
// Preconditions: ns is held (Setattr).
func (f *file) truncateNsHeld(size uint64) (bool, syscall.Errno) {
	f.currentNsHeld()
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
