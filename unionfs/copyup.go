package unionfs

import (
	"fmt"
	"strings"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// copyUp makes sure node n exists in the upper layer with its data,
// copying its parents first and then the object itself. withData=false
// copies a regular file as an empty one (for an open with O_TRUNC). The
// caller holds ns.
//
// The copy is made in the work dir, completed (data, owner, xattrs, mode,
// times, fsync) and only then renamed into place, so a crash leaves
// either no upper copy or a whole one. n.mu serializes racing copy-ups:
// the second caller finds the node already upper.
func (u *FS) copyUp(n *node, withData bool) error {
	if withData {
		return u.copyUpAs(n, copyWhole)
	}
	return u.copyUpAs(n, copyEmpty)
}

// copyHow says what a copy-up of a regular file takes along.
type copyHow int

const (
	copyWhole    copyHow = iota // data and metadata
	copyEmpty                   // metadata, no data (the data is being dropped)
	copyMetaOnly                // metadata, data left below (see metacopy.go)
)

// copyUpAs is copyUp for the given kind of copy.
func (u *FS) copyUpAs(n *node, how copyHow) error {
	if !u.writable() {
		return unix.EROFS
	}
	if u.branched {
		return u.copyUpBranched(n, how != copyEmpty)
	}
	metaOnly := how == copyMetaOnly
	if st := n.state(); st.dataUpper() || (st.upper && metaOnly) {
		return nil
	}
	if p := n.parentNode(); p != nil {
		if err := u.copyUp(p, true); err != nil {
			return err
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st.dataUpper() || (n.st.upper && metaOnly) {
		return nil
	}
	if len(n.st.lowers) == 0 {
		return fmt.Errorf("copy-up %s: %w", n.path(), unix.ENOENT)
	}
	path := n.path()
	if n.st.upper {
		if err := u.copyUpData(n, how == copyWhole); err != nil {
			return fmt.Errorf("copy-up data of %s: %w", path, err)
		}
		n.st.metacopy = false
		n.copiedUp.Store(true)
		// The data copy replaced the metadata-only file with a new
		// one: a relabelled name shows the new number.
		u.relabelBrokenLink(n, path)
		return nil
	}
	if entry, err := u.copyUpIndexed(n.st.lowers[0], path, n.StableAttr()); err != nil || entry != "" {
		if err != nil {
			return fmt.Errorf("copy-up %s into the index: %w", path, err)
		}
		n.st.upper, n.st.metacopy, n.st.index = true, false, entry
		n.copiedUp.Store(true)
		return nil
	}
	metacopy, err := u.copyUpObject(n.st.lowers[0], path, n.StableAttr(), how)
	if err != nil {
		return fmt.Errorf("copy-up %s: %w", path, err)
	}
	n.st.upper = true
	n.st.metacopy = metacopy
	if !metacopy {
		n.copiedUp.Store(true)
	}
	u.relabelBrokenLink(n, path)
	return nil
}

// relabelBrokenLink is called after n, copied up to path, got a new upper
// file. If n is a name of a lower hard link (see identityFrom), it is now
// a file of its own: it shows the copy's inode number (see relabel.go)
// and link count. An open, a setxattr or an mmap answers with no
// attributes, so the kernel would show its cached ones until it asks
// again: they are dropped (that takes no kernel lock, so it is safe under
// any request). The caller holds n.mu.
func (u *FS) relabelBrokenLink(n *node, path string) {
	id := n.StableAttr()
	if id.Gen == 0 {
		return
	}
	var st unix.Stat_t
	if err := u.upper.lstat(path, &st); err == nil {
		u.relabels.set(id, u.inoFor(u.upper, st.Ino))
	}
	n.NotifyContent(-1, 0)
	// The kernel's cached listing of the directory holds the old number
	// as the name's d_ino: drop it (no directory read holds its pages
	// while it waits for the daemon).
	if p := n.parentNode(); p != nil {
		p.NotifyContent(0, 0)
	}
}

// copyUpObject copies the lower object src to path in the upper layer;
// it reports whether it made a metadata-only copy of a regular file.
func (u *FS) copyUpObject(src layerRef, path string, id fs.StableAttr, how copyHow) (metacopy bool, err error) {
	var st unix.Stat_t
	if err := src.l.lstat(src.path, &st); err != nil {
		return false, err
	}
	tmp := tempName()
	kind := st.Mode & unix.S_IFMT
	defer func() {
		if err != nil {
			flags := 0
			if kind == unix.S_IFDIR {
				flags = unix.AT_REMOVEDIR
			}
			unix.Unlinkat(u.work, tmp, flags)
		}
	}()
	switch kind {
	case unix.S_IFDIR:
		if err := unix.Mkdirat(u.work, tmp, 0o700); err != nil {
			return false, err
		}
	case unix.S_IFREG:
		metacopy = how == copyMetaOnly && st.Size > 0
		if metacopy {
			err = u.makeMetacopy(tmp, st.Size)
		} else {
			err = u.copyFile(src, tmp, &st, how != copyEmpty)
		}
		if err != nil {
			return false, err
		}
	case unix.S_IFLNK:
		buf := make([]byte, unix.PathMax)
		got, err := unix.Readlinkat(src.l.fd, rel(src.path), buf)
		if err != nil {
			return false, err
		}
		if err := unix.Symlinkat(string(buf[:got]), u.work, tmp); err != nil {
			return false, err
		}
	default:
		if err := unix.Mknodat(u.work, tmp, st.Mode, int(st.Rdev)); err != nil {
			return false, err
		}
	}
	u.crashPoint(CrashCopyUpData)
	if err := u.copyMetadata(src, tmp, &st, id); err != nil {
		return false, err
	}
	u.crashPoint(CrashCopyUpBeforeInstall)
	if err := u.installFromWork(tmp, path); err != nil {
		return false, err
	}
	u.crashPoint(CrashCopyUpAfterInstall)
	return metacopy, nil
}

// copyFile creates tmp in the work dir with src's data, holes kept.
func (u *FS) copyFile(src layerRef, tmp string, st *unix.Stat_t, withData bool) error {
	return u.copyFileIn(u.work, src, tmp, st, withData)
}

// copyFileIn is copyFile into the scratch dir work.
func (u *FS) copyFileIn(work int, src layerRef, tmp string, st *unix.Stat_t, withData bool) error {
	dst, err := unix.Openat(work, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(dst)
	if withData && st.Size > 0 {
		in, err := src.l.open(src.path, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("open source: %w", err)
		}
		defer unix.Close(in)
		if sysx.Reflink(dst, in) != nil {
			if err := sysx.CopySparse(dst, in, st.Size); err != nil {
				return fmt.Errorf("copy data: %w", err)
			}
		}
	}
	if !u.opts.NoFsync {
		if err := unix.Fsync(dst); err != nil {
			return fmt.Errorf("fsync: %w", err)
		}
	}
	return nil
}

// copyMetadata gives tmp src's owner, xattrs, mode and times, in that
// order: chown clears set-id bits and security.capability, so those come
// after it.
func (u *FS) copyMetadata(src layerRef, tmp string, st *unix.Stat_t, id fs.StableAttr) error {
	return u.copyMetadataIn(u.work, src, tmp, st, id)
}

// copyMetadataIn is copyMetadata for tmp in the scratch dir work.
func (u *FS) copyMetadataIn(work int, src layerRef, tmp string, st *unix.Stat_t, id fs.StableAttr) error {
	if err := u.chown(work, tmp, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	names, err := sysx.Listxattr(src.l.fd, rel(src.path))
	if err != nil && err != unix.EOPNOTSUPP && err != unix.ENOTSUP {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range names {
		if u.markers.IsPrivateXattrIn(name) {
			continue
		}
		v, err := sysx.Getxattr(src.l.fd, rel(src.path), name)
		if err != nil {
			return fmt.Errorf("read xattr %s: %w", name, err)
		}
		if err := sysx.Setxattr(work, tmp, name, v, 0); err != nil {
			if isLink || err == unix.EOPNOTSUPP {
				continue // the upper cannot hold it; kernel overlay skips too
			}
			if (err == unix.EPERM || err == unix.EACCES) && !strings.HasPrefix(name, "user.") {
				u.refusedOnce("copying "+name, err)
				continue // a privileged namespace this mounter lacks
			}
			return fmt.Errorf("copy xattr %s: %w", name, err)
		}
	}
	if err := sysx.Setxattr(work, tmp, u.idXattr, []byte(formatID(id)), 0); err != nil && !isLink {
		return fmt.Errorf("record identity: %w", err)
	}
	if !isLink {
		if err := unix.Fchmodat(work, tmp, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	times := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(work, tmp, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// installFromWork renames the finished object tmp from the work dir to
// path in the upper, keeping the parent directory's times as they were
// (a copy-up is not a change the user made).
func (u *FS) installFromWork(tmp, path string) error {
	return u.renameFromWork(tmp, path, unix.RENAME_NOREPLACE)
}

// replaceFromWork is installFromWork over an object already at path.
func (u *FS) replaceFromWork(tmp, path string) error {
	return u.renameFromWork(tmp, path, 0)
}

func (u *FS) renameFromWork(tmp, path string, flags uint) error {
	parent := dirOf(path)
	var pst unix.Stat_t
	haveParent := u.upper.lstat(parent, &pst) == nil
	if err := sysx.Rename(u.work, tmp, u.upper.fd, path, flags); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if haveParent {
		unix.UtimesNanoAt(u.upper.fd, rel(parent), []unix.Timespec{pst.Atim, pst.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// chown sets an object's ids. Without the privilege to give away files
// (an ordinary user, or ids a user namespace does not map) the object
// keeps the mounter's ids, as fuse-overlayfs does; that is logged once.
func (u *FS) chown(dirfd int, path string, uid, gid int) error {
	err := unix.Fchownat(dirfd, path, uid, gid, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH)
	if err == unix.EPERM || err == unix.EINVAL {
		u.refusedOnce("chown", err)
		return nil
	}
	return err
}

// refusedOnce logs the first refusal of each kind of privileged change.
func (u *FS) refusedOnce(what string, err error) {
	u.refusedMu.Lock()
	defer u.refusedMu.Unlock()
	if u.refused == nil {
		u.refused = map[string]bool{}
	}
	if !u.refused[what] {
		u.refused[what] = true
		u.logger.Printf("%s refused (%v): copies keep the mounter's ids and privileged xattrs are dropped", what, err)
	}
}
