package unionfs

import (
	"context"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/whiteout"
)

var (
	_ fs.NodeUnlinker = (*node)(nil)
	_ fs.NodeRmdirer  = (*node)(nil)
)

// Unlink removes a non-directory. Where a lower layer shows the name, the
// upper gets a whiteout in its place (replacing an upper copy atomically).
//
// Preconditions: ns is held for writing (see namespaceChanges).
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	u := n.ufs
	if !u.writable() {
		return syscall.EROFS
	}
	f, err := u.lookup(n.path(), n.state(), name)
	if err != nil {
		return u.errno(err)
	}
	if f.isDir() {
		return syscall.EISDIR
	}
	return u.errno(n.removeName(name, f))
}

// Rmdir removes a directory that is empty in the merged view.
//
// Preconditions: ns is held for writing (see namespaceChanges).
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	u := n.ufs
	if !u.writable() {
		return syscall.EROFS
	}
	parentPath := n.path()
	f, err := u.lookup(parentPath, n.state(), name)
	if err != nil {
		return u.errno(err)
	}
	if !f.isDir() {
		return syscall.ENOTDIR
	}
	entries, err := u.readMerged(join(parentPath, name), f.state, false)
	if err != nil {
		return u.errno(err)
	}
	if len(entries) > 0 {
		return syscall.ENOTEMPTY
	}
	if err := n.removeName(name, f); err != nil {
		return u.errno(err)
	}
	n.noteGoneDir(name, f)
	return 0
}

// removeName removes name (found as f) from directory n. The caller holds
// ns for writing.
func (n *node) removeName(name string, f *found) error {
	u := n.ufs
	if u.branched {
		return n.removeBranched(name, f)
	}
	parentPath := n.path()
	path := join(parentPath, name)
	needWhiteout, err := u.lowerHas(parentPath, n.state(), name)
	if err != nil {
		return err
	}
	if needWhiteout {
		if err := u.copyUp(n, true); err != nil {
			return err
		}
	}
	if done, err := u.removeIndexed(n, path, f, needWhiteout); done || err != nil {
		return err
	}
	switch {
	case f.state.upper && f.isDir():
		return u.removeUpperDir(path, needWhiteout)
	case f.state.upper && !needWhiteout:
		return unix.Unlinkat(u.upper.fd, path, 0)
	case needWhiteout:
		return u.makeWhiteout(path)
	default:
		return fmt.Errorf("remove %s: neither in the upper nor below: %w", path, unix.ENOENT)
	}
}

// removeUpperDir removes an upper directory that holds nothing but
// whiteouts, leaving a whiteout in its place if needWhiteout. The
// directory is first moved into the work dir (swapped with the new
// whiteout), so the change is atomic in the merged view.
func (u *FS) removeUpperDir(path string, needWhiteout bool) error {
	tmp := tempName()
	if needWhiteout && u.wformat != whiteout.Chardev {
		// Only a device node can be swapped in atomically: move the
		// directory out, then leave the whiteout.
		if err := sysx.Rename(u.upper.fd, path, u.work, tmp, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("move %s to the work dir: %w", path, err)
		}
		if err := u.makeWhiteout(path); err != nil {
			return err
		}
		return sysx.RemoveAllAt(u.work, tmp)
	}
	if needWhiteout {
		if err := whiteout.MakeWhiteout(u.work, tmp); err != nil {
			return err
		}
		if err := sysx.Rename(u.work, tmp, u.upper.fd, path, unix.RENAME_EXCHANGE); err != nil {
			unix.Unlinkat(u.work, tmp, 0)
			return fmt.Errorf("swap %s with a whiteout: %w", path, err)
		}
	} else if err := sysx.Rename(u.upper.fd, path, u.work, tmp, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("move %s to the work dir: %w", path, err)
	}
	return sysx.RemoveAllAt(u.work, tmp)
}
