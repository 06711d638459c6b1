package unionfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/unionmount/unionmount/internal/sysx"
	"golang.org/x/sys/unix"
)

var _ fs.NodeSetattrer = (*node)(nil)

// Setattr changes mode, owner, size or times, copying the object up
// first. A size change through an open handle goes to its fd, which
// still works after the name was unlinked.
func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	u := n.ufs
	u.ns.RLock()
	defer u.ns.RUnlock()
	size, hasSize := in.GetSize()
	if f, ok := fh.(*file); ok && hasSize {
		if done, errno := f.truncateNsHeld(size); errno != 0 {
			return errno
		} else if done {
			hasSize = false
		}
	}
	if n.path() == u.orphanedPath {
		return n.setattrUnlinked(ctx, fh, in, out)
	}
	var err error
	if hasSize {
		// Refused while passthrough opens read the lower file (see
		// passthrough.go); nothing has changed yet.
		if err := n.beginDataChange(); err != nil {
			return u.errno(err)
		}
		defer n.endDataChange()
		err = u.copyUp(n, size != 0)
	} else {
		err = u.copyUpMeta(n)
	}
	if err != nil {
		return u.errno(err)
	}
	ref, _ := u.top(n.state(), n.path())
	path, fd := rel(ref.path), ref.l.fd
	if mode, ok := in.GetMode(); ok {
		if err := unix.Fchmodat(fd, path, mode&0o7777, 0); err != nil {
			return u.errno(err)
		}
		if u.opts.XattrPermissions != 0 {
			if err := u.setOverride(fd, path, -1, -1, mode&0o7777); err != nil {
				return u.errno(err)
			}
		}
	}
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	if hasUID || hasGID {
		su, sg, errno := u.storedOwner(uid, hasUID, gid, hasGID)
		if errno != 0 {
			return errno
		}
		if u.opts.XattrPermissions != 0 {
			err = u.setOverride(fd, path, su, sg, ^uint32(0))
		} else {
			err = unix.Fchownat(fd, path, su, sg, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			return u.errno(err)
		}
	}
	if hasSize {
		wfd, err := ref.l.open(path, unix.O_WRONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return u.errno(err)
		}
		err = unix.Ftruncate(wfd, int64(size))
		unix.Close(wfd)
		if err != nil {
			return u.errno(err)
		}
	}
	if _, sized := in.GetSize(); sized {
		// The kernel asks (FATTR_KILL_SUIDGID) when the caller may not
		// keep set-id bits; capabilities go on any truncation.
		if err := dropPrivileges(fd, path, in.Valid&fuse.FATTR_KILL_SUIDGID == 0); err != nil {
			return u.errno(err)
		}
	}
	if times, ok := setattrTimes(in); ok {
		if err := unix.UtimesNanoAt(fd, path, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return u.errno(err)
		}
	}
	var s unix.Stat_t
	if err := ref.l.lstat(path, &s); err != nil {
		return u.errno(err)
	}
	if st := n.state(); st.metacopy {
		u.showLowerBlocks(st, &s)
	}
	u.showIndexNlink(ref, &s)
	u.applyOverride(ref, &s)
	u.fillAttr(&out.Attr, &s)
	out.Ino = n.StableAttr().Ino // the union's number, not the upper file's
	// go-fuse leaves a SETATTR reply's timeout at 0 (it sets one for
	// GETATTR only), which made the kernel ask again at the next stat:
	// one more request per file in an untar (mtime, chown, chmod).
	out.SetTimeout(u.opts.CacheTimeout)
	return 0
}

// storedOwner turns the ids a chown asks for into the ids the layers
// keep (-1 for one not asked for). An id the mapping does not cover
// cannot be stored: EINVAL, as chown to an id outside a user namespace.
func (u *FS) storedOwner(uid uint32, hasUID bool, gid uint32, hasGID bool) (int, int, syscall.Errno) {
	su, sg := -1, -1
	if hasUID {
		id, ok := u.opts.UIDMap.Stored(uid)
		if !ok {
			return 0, 0, syscall.EINVAL
		}
		su = int(id)
	}
	if hasGID {
		id, ok := u.opts.GIDMap.Stored(gid)
		if !ok {
			return 0, 0, syscall.EINVAL
		}
		sg = int(id)
	}
	return su, sg, 0
}

// setattrTimes turns the request's time fields into utimensat's
// argument, with UTIME_OMIT for those not set and UTIME_NOW for "now".
func setattrTimes(in *fuse.SetAttrIn) ([]unix.Timespec, bool) {
	omit := unix.Timespec{Nsec: unix.UTIME_OMIT}
	now := unix.Timespec{Nsec: unix.UTIME_NOW}
	ts := []unix.Timespec{omit, omit}
	set := false
	if in.Valid&fuse.FATTR_ATIME != 0 {
		set = true
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			ts[0] = now
		} else {
			ts[0] = unix.Timespec{Sec: int64(in.Atime), Nsec: int64(in.Atimensec)}
		}
	}
	if in.Valid&fuse.FATTR_MTIME != 0 {
		set = true
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			ts[1] = now
		} else {
			ts[1] = unix.Timespec{Sec: int64(in.Mtime), Nsec: int64(in.Mtimensec)}
		}
	}
	return ts, set
}

// setattrUnlinked changes an object whose name is gone (unlinked, or
// renamed over) through one of its open handles: the one the request
// names, or any. The kernel asks this of a file it holds open with the
// writeback cache on: at close it flushes the times it kept, which a
// rename over the name had just changed (its ctime), and a failure there
// is close(2)'s EIO. A handle still on a lower file cannot change it;
// the times the kernel flushes to it have nowhere to go (the file is
// gone with its last close), so the answer is its attributes as they
// are.
func (n *node) setattrUnlinked(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f, _ := fh.(*file)
	if f == nil {
		f = n.someOpenFile()
	}
	if f == nil {
		return syscall.ENOENT
	}
	fd := f.currentNsHeld()
	f.mu.RLock()
	onLower := f.onLower
	f.mu.RUnlock()
	onlyTimes := in.Valid&^(fuse.FATTR_ATIME|fuse.FATTR_MTIME|fuse.FATTR_ATIME_NOW|fuse.FATTR_MTIME_NOW|fuse.FATTR_CTIME|fuse.FATTR_FH|fuse.FATTR_LOCKOWNER) == 0
	if onLower {
		if onlyTimes {
			return f.getattrNsHeld(out)
		}
		return syscall.ENOENT
	}
	u := n.ufs
	if mode, ok := in.GetMode(); ok {
		if err := unix.Fchmod(fd, mode&0o7777); err != nil {
			return u.errno(err)
		}
	}
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	if hasUID || hasGID {
		su, sg, errno := u.storedOwner(uid, hasUID, gid, hasGID)
		if errno != 0 {
			return errno
		}
		if err := unix.Fchown(fd, su, sg); err != nil {
			return u.errno(err)
		}
	}
	if times, ok := setattrTimes(in); ok {
		// A read-only fd cannot take futimens; its /proc name can.
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, sysx.FdPath(fd), times, 0); err != nil {
			return u.errno(err)
		}
	}
	return f.getattrNsHeld(out)
}

// someOpenFile returns one of the node's open handles, preferring one on
// the upper copy, or nil if none is open.
func (n *node) someOpenFile() *file {
	n.mu.Lock()
	defer n.mu.Unlock()
	var any *file
	for f := range n.openFiles {
		f.mu.RLock()
		onLower := f.onLower
		f.mu.RUnlock()
		if !onLower {
			return f
		}
		any = f
	}
	return any
}
