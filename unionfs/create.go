package unionfs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/whiteout"
)

var (
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeMkdirer   = (*node)(nil)
	_ fs.NodeMknoder   = (*node)(nil)
	_ fs.NodeSymlinker = (*node)(nil)
	_ fs.NodeLinker    = (*node)(nil)
)

// newObject describes an object to create in a directory.
type newObject struct {
	name string
	// make creates the object as tmp in the scratch dir work.
	make func(work int, tmp string) error
	// on is the branch a hard link must go on, in a branched union.
	on    *layer
	isDir bool
	// own gives the object the caller's ids; false for hard links.
	own bool
	// setID says a non-directory is made with set-user-ID or
	// set-group-ID bits, which giving it its owner clears.
	setID bool
}

// create makes obj in directory n: the parent is copied up, and the
// object is made in place when it needs nothing more; otherwise it is
// prepared in the work dir (owner, opaque marker) and renamed into place,
// replacing a whiteout atomically when there is one. The caller holds ns
// for writing.
func (n *node) create(ctx context.Context, obj newObject) (*found, error) {
	u := n.ufs
	if !u.writable() {
		return nil, unix.EROFS
	}
	if whiteout.IsAufsName(obj.name) {
		return nil, unix.EPERM // reserved for whiteouts
	}
	if u.branched {
		return n.createBranched(ctx, obj)
	}
	parentPath := n.path()
	path := join(parentPath, obj.name)
	// What stands at the name, from the top: an upper object (EEXIST
	// unless it is a whiteout), an aufs whiteout beside it, or a lower
	// object (EEXIST).
	var existing unix.Stat_t
	overWhiteout, aufsWhiteout := false, false
	if err := u.upper.lstat(path, &existing); err == nil {
		if !u.markers.IsWhiteout(u.upper.fd, path, &existing) {
			return nil, unix.EEXIST
		}
		overWhiteout = true
	} else if !isMissingInLayer(err) {
		return nil, err
	} else if aufsWhiteout = whiteout.HasAufsWhiteout(u.upper.fd, parentPath, obj.name); !aufsWhiteout {
		if _, err := u.lookup(parentPath, nodeState{lowers: n.state().lowers}, obj.name); err == nil {
			return nil, unix.EEXIST
		} else if !errors.Is(err, errNoSuchName) {
			return nil, err
		}
	}
	if err := u.copyUp(n, true); err != nil {
		return nil, err
	}
	if !overWhiteout && !aufsWhiteout && (!obj.own || u.madeAsCaller(ctx)) {
		// Made in place, the object is whole at once: no owner to
		// give it and no whiteout to replace, as kernel overlay
		// creates when no whiteout is in the way.
		if err := obj.make(u.upper.fd, path); err != nil {
			return nil, err
		}
		return u.installed(path, obj.own)
	}
	tmp := tempName()
	if err := obj.make(u.work, tmp); err != nil {
		return nil, err
	}
	removeTmp := func() {
		flags := 0
		if obj.isDir {
			flags = unix.AT_REMOVEDIR
		}
		unix.Unlinkat(u.work, tmp, flags)
	}
	if obj.own {
		if err := u.chownToCaller(ctx, n, tmp, obj); err != nil {
			removeTmp()
			return nil, err
		}
	}
	if obj.isDir && (overWhiteout || aufsWhiteout) {
		if err := u.markers.SetOpaqueFormat(u.work, tmp, u.wformat); err != nil {
			sysx.RemoveAllAt(u.work, tmp)
			return nil, err
		}
	}
	if err := u.installOver(tmp, path, obj.isDir, overWhiteout); err != nil {
		sysx.RemoveAllAt(u.work, tmp)
		return nil, err
	}
	if aufsWhiteout {
		if err := u.dropAufsWhiteout(path); err != nil {
			return nil, err
		}
	}
	return u.installed(path, obj.own)
}

// installed returns what create made at path in the upper; made says it
// is a new object rather than a new name for one (a hard link).
func (u *FS) installed(path string, made bool) (*found, error) {
	var f found
	if err := u.upper.lstat(path, &f.stat); err != nil {
		return nil, err
	}
	f.state.upper = true
	f.top = layerRef{u.upper, path}
	if made {
		// New: it cannot hold a recorded identity yet.
		f.id = u.identityFrom(f.top, &f.stat, nil, unix.ENODATA)
	} else {
		f.id = u.identity(f.top, &f.stat)
	}
	return &f, nil
}

// madeAsCaller reports whether an object the daemon makes gets the
// owner the caller would give it: the caller's ids, as the layers keep
// them, are the daemon's own (root making files as root, or a rootless
// container's root), and owners are not kept in an xattr. In a
// set-group-ID directory the kernel gives the object the directory's
// group, as chownToCaller would.
func (u *FS) madeAsCaller(ctx context.Context) bool {
	if u.opts.XattrPermissions != 0 {
		return false
	}
	uid, gid, ok := u.callerIDs(ctx)
	return !ok || (uid == u.selfUID && gid == u.selfGID)
}

// installOver renames tmp from the work dir to path, atomically replacing
// the whiteout there if overWhiteout. A directory cannot replace a
// device node, so it is exchanged with the whiteout, which is then
// removed from the work dir.
func (u *FS) installOver(tmp, path string, isDir, overWhiteout bool) error {
	switch {
	case !overWhiteout:
		return sysx.Rename(u.work, tmp, u.upper.fd, path, unix.RENAME_NOREPLACE)
	case isDir:
		if err := sysx.Rename(u.work, tmp, u.upper.fd, path, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		if err := unix.Unlinkat(u.work, tmp, 0); err != nil {
			u.logger.Printf("remove replaced whiteout: %v", err)
		}
		return nil
	default:
		return sysx.Rename(u.work, tmp, u.upper.fd, path, 0)
	}
}

// chownToCaller gives tmp the calling process's ids, with the group of a
// set-group-ID parent directory, as the kernel does for new files.
func (u *FS) chownToCaller(ctx context.Context, parent *node, tmp string, obj newObject) error {
	return u.chownToCallerOn(ctx, u.upper, u.work, parent.path(), tmp, obj)
}

// chownToCallerOn is chownToCaller for tmp in the scratch dir work of
// layer l, to go in directory parentPath there.
func (u *FS) chownToCallerOn(ctx context.Context, l *layer, work int, parentPath, tmp string, obj newObject) error {
	uid, gid, ok := u.callerIDs(ctx)
	if !ok {
		return nil
	}
	var pst unix.Stat_t
	if err := l.lstat(parentPath, &pst); err == nil && pst.Mode&unix.S_ISGID != 0 {
		gid = int(pst.Gid)
		if obj.isDir {
			var st unix.Stat_t
			if err := unix.Fstatat(work, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
				defer unix.Fchmodat(work, tmp, (st.Mode&0o7777)|unix.S_ISGID, 0)
			}
		}
	}
	// The kernel has dropped any set-id bit the caller may not set
	// before it sent the request: those left are the caller's to keep.
	var made unix.Stat_t
	keepSetID := obj.setID && unix.Fstatat(work, tmp, &made, unix.AT_SYMLINK_NOFOLLOW) == nil
	if err := u.setOwner(work, tmp, uid, gid); err != nil {
		return fmt.Errorf("chown new object: %w", err)
	}
	if keepSetID {
		if err := unix.Fchmodat(work, tmp, made.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("restore the set-id bits of a new object: %w", err)
		}
	}
	return nil
}

// callerIDs returns the calling process's ids as the layers keep them.
// An id the mount's mapping does not cover is kept as the overflow id,
// as fuse-overlayfs does.
func (u *FS) callerIDs(ctx context.Context) (uid, gid int, ok bool) {
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return 0, 0, false
	}
	su, _ := u.opts.UIDMap.Stored(caller.Uid)
	sg, _ := u.opts.GIDMap.Stored(caller.Gid)
	return int(su), int(sg), true
}

// setOwner gives the object at path (relative to dirfd) stored ids uid
// and gid (-1 keeps one): for real, or in the override xattr with
// xattr_permissions.
func (u *FS) setOwner(dirfd int, path string, uid, gid int) error {
	if u.opts.XattrPermissions != 0 {
		return u.setOverride(dirfd, path, uid, gid, ^uint32(0))
	}
	return u.chown(dirfd, path, uid, gid)
}

func (n *node) entry(ctx context.Context, f *found, out *fuse.EntryOut) *fs.Inode {
	n.ufs.showAttr(f, &out.Attr)
	return n.newChild(ctx, f.state, f.id)
}

// Create makes and opens a new regular file.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	u := n.ufs
	u.ns.Lock()
	defer u.ns.Unlock()
	openFlags := u.flagsBelow(flags, unix.O_TRUNC)
	fd := -1
	setID := mode&(unix.S_ISUID|unix.S_ISGID) != 0
	f, err := n.create(ctx, newObject{name: name, own: true, setID: setID, make: func(work int, tmp string) error {
		var err error
		fd, err = unix.Openat(work, tmp, openFlags|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, mode&0o7777)
		return err
	}})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, nil, 0, u.errno(err)
	}
	ino := n.entry(ctx, f, out)
	child := ino.Operations().(*node)
	// A new file has no capabilities: only the mode it was made with
	// can give it set-id bits.
	handle, fuseFlags, err := child.newHandle(fd, openFlags, handleSource{privileged: setID})
	if err != nil {
		unix.Close(fd) // a new file's node has no lower file to conflict with
		return nil, nil, 0, u.errno(err)
	}
	return ino, handle, fuseFlags, 0
}

// Mkdir makes a directory; over a whiteout it is made opaque.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := n.ufs
	u.ns.Lock()
	defer u.ns.Unlock()
	f, err := n.create(ctx, newObject{name: name, own: true, isDir: true, make: func(work int, tmp string) error {
		return unix.Mkdirat(work, tmp, mode&0o7777)
	}})
	if err != nil {
		return nil, u.errno(err)
	}
	return n.entry(ctx, f, out), 0
}

// Mknod makes a device node, fifo or socket.
func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := n.ufs
	u.ns.Lock()
	defer u.ns.Unlock()
	if mode&unix.S_IFMT == unix.S_IFCHR && dev == 0 {
		// A 0/0 character device would read as a whiteout.
		return nil, syscall.EPERM
	}
	f, err := n.create(ctx, newObject{name: name, own: true, setID: mode&(unix.S_ISUID|unix.S_ISGID) != 0, make: func(work int, tmp string) error {
		return unix.Mknodat(work, tmp, mode, int(dev))
	}})
	if err != nil {
		return nil, u.errno(err)
	}
	return n.entry(ctx, f, out), 0
}

// Symlink makes a symbolic link.
func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := n.ufs
	u.ns.Lock()
	defer u.ns.Unlock()
	f, err := n.create(ctx, newObject{name: name, own: true, make: func(work int, tmp string) error {
		return unix.Symlinkat(target, work, tmp)
	}})
	if err != nil {
		return nil, u.errno(err)
	}
	return n.entry(ctx, f, out), 0
}

// Link makes a hard link to target, copying it up first.
func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := n.ufs
	u.ns.Lock()
	defer u.ns.Unlock()
	src, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	if !u.writable() {
		return nil, syscall.EROFS
	}
	if _, p := src.Parent(); p == nil && !src.unnamed() {
		return nil, syscall.ENOENT // unlinked: nothing to link from
	}
	if err := u.copyUp(src, true); err != nil {
		return nil, u.errno(err)
	}
	if err := u.linkingIndexed(src); err != nil {
		return nil, u.errno(err)
	}
	srcDir, srcPath, linkFlags := src.linkSource()
	f, err := n.create(ctx, newObject{name: name, on: u.writeLayer(src), make: func(work int, tmp string) error {
		return unix.Linkat(srcDir, srcPath, work, tmp, linkFlags)
	}})
	if err != nil {
		return nil, u.errno(err)
	}
	n.ufs.showAttr(f, &out.Attr)
	return src.EmbeddedInode(), 0
}

// makeWhiteout hides path from the layers below: a device node or xattr
// whiteout atomically replaces whatever non-directory the upper has
// there; an aufs ".wh." file goes beside it first, and the upper object
// is removed after. The caller holds ns for writing.
func (u *FS) makeWhiteout(path string) error {
	tmp := tempName()
	err := u.markers.PrepareWhiteout(u.work, tmp, u.wformat)
	if err != nil && u.wauto && u.wformat == whiteout.Chardev && whiteout.IsPermissionError(err) {
		u.logger.Printf("device nodes refused (%v): writing xattr whiteouts from now on", err)
		u.wformat = whiteout.Xattr
		err = u.markers.PrepareWhiteout(u.work, tmp, u.wformat)
	}
	if err != nil {
		return err
	}
	parent, name := dirOf(path), baseOf(path)
	target := path
	switch u.wformat {
	case whiteout.Aufs:
		target = join(parent, whiteout.AufsWhiteoutOf(name))
	case whiteout.Xattr:
		if err := u.markers.MarkHoldsXattrWhiteouts(u.upper.fd, rel(parent)); err != nil {
			unix.Unlinkat(u.work, tmp, 0)
			return err
		}
	}
	if err := sysx.Rename(u.work, tmp, u.upper.fd, target, 0); err != nil {
		unix.Unlinkat(u.work, tmp, 0)
		return fmt.Errorf("install whiteout %s: %w", path, err)
	}
	if u.wformat == whiteout.Aufs {
		if err := unix.Unlinkat(u.upper.fd, path, 0); err != nil && !isMissingInLayer(err) {
			return fmt.Errorf("remove %s behind its whiteout: %w", path, err)
		}
	}
	return nil
}

// dropAufsWhiteout removes the aufs whiteout of path once something new
// stands there.
func (u *FS) dropAufsWhiteout(path string) error {
	err := unix.Unlinkat(u.upper.fd, join(dirOf(path), whiteout.AufsWhiteoutOf(baseOf(path))), 0)
	if err != nil && !isMissingInLayer(err) {
		return fmt.Errorf("remove the whiteout of %s: %w", path, err)
	}
	return nil
}
