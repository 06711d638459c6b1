package unionfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/unionmount/unionmount/internal/sysx"
	"golang.org/x/sys/unix"
)

var (
	_ fs.NodeTmpfiler    = (*node)(nil)
	_ fs.NodeOnForgetter = (*node)(nil)
)

// Tmpfile makes an unnamed file (O_TMPFILE) in the upper copy of the
// directory. The node keeps its own fd so that linkat can later give it
// a name.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	u := n.ufs
	u.ns.RLock()
	defer u.ns.RUnlock()
	if !u.writable() {
		return nil, nil, 0, syscall.EROFS
	}
	if u.branched {
		return nil, nil, 0, syscall.EOPNOTSUPP // the kernel falls back to a named file
	}
	if err := u.copyUp(n, true); err != nil {
		return nil, nil, 0, u.errno(err)
	}
	openFlags := u.flagsBelow(flags, unix.O_TMPFILE)
	fd, err := u.upper.open(n.path(), openFlags|unix.O_TMPFILE, mode&0o7777)
	if err != nil {
		return nil, nil, 0, u.errno(err)
	}
	if uid, gid, ok := u.callerIDs(ctx); ok {
		if err := u.setOwner(fd, "", uid, gid); err != nil {
			unix.Close(fd)
			return nil, nil, 0, u.errno(err)
		}
	}
	anon, err := unix.Open(sysx.FdPath(fd), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, 0, u.errno(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		unix.Close(anon)
		return nil, nil, 0, u.errno(err)
	}
	child := &node{ufs: u, st: nodeState{upper: true}, anonFd: anon}
	child.copiedUp.Store(true)
	ino := n.NewInode(ctx, child, fs.StableAttr{Mode: unix.S_IFREG, Ino: u.inoFor(u.upper, st.Ino)})
	// As an open file's Getattr presents it.
	out.Attr.FromStat(toSyscallStat(&st))
	u.applyOverrideFd(fd, &out.Attr)
	u.adjustAttr(&out.Attr)
	src := handleSource{privileged: openFlags&unix.O_ACCMODE != unix.O_RDONLY && hasPrivileges(fd)}
	f, fuseFlags, err := child.newHandle(fd, openFlags, src)
	if err != nil {
		unix.Close(fd) // a new node has no lower file to conflict with
		return nil, nil, 0, u.errno(err)
	}
	return ino, f, fuseFlags, 0
}

// OnForget drops the fd an unnamed file kept.
func (n *node) OnForget() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.anonFd > 0 {
		unix.Close(n.anonFd)
		n.anonFd = -1
	}
}

// unnamed reports whether n is an O_TMPFILE file that still has its fd.
func (n *node) unnamed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.anonFd > 0
}

// linkSource returns how to name n's upper object for linkat: by path,
// or through its own fd when it is an unnamed O_TMPFILE file.
func (n *node) linkSource() (dirfd int, path string, flags int) {
	n.mu.Lock()
	anon := n.anonFd
	n.mu.Unlock()
	if anon > 0 {
		return unix.AT_FDCWD, sysx.FdPath(anon), unix.AT_SYMLINK_FOLLOW
	}
	if ref, _ := n.ufs.top(n.state(), n.path()); ref.l != nil && ref.l != n.ufs.upper {
		// An indexed hard link (its entry), or an object on a
		// writable branch of a branched union.
		return ref.l.fd, ref.path, 0
	}
	return n.ufs.upper.fd, n.path(), 0
}
