package unionfs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/whiteout"
)

var _ fs.NodeRenamer = (*node)(nil)

// renameSide is one end of a rename: a directory node, a name in it, and
// what the layers show there.
type renameSide struct {
	dir   *node
	name  string
	path  string
	found *found // nil when nothing is there
	// lowerHas is set when a lower layer shows the name, so the upper
	// must keep hiding it once the object moves away.
	lowerHas bool
}

func (n *node) renameSide(name string) (*renameSide, error) {
	u := n.ufs
	s := &renameSide{dir: n, name: name, path: join(n.path(), name)}
	f, err := u.lookup(n.path(), n.state(), name)
	if err == nil {
		s.found = f
	} else if !errors.Is(err, errNoSuchName) {
		return nil, err
	}
	if s.lowerHas, err = u.lowerHas(n.path(), n.state(), name); err != nil {
		return nil, err
	}
	return s, nil
}

// Rename moves name to newName in newParent. A directory that merges lower
// directories is copied up alone and marked with a redirect to where its
// lower part still lies (kernel overlay's redirect_dir=on); with
// redirects off that gives EXDEV, as the kernel does.
//
// Preconditions: ns is held for writing (see namespaceChanges).
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	u := n.ufs
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if !u.writable() {
		return syscall.EROFS
	}
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return syscall.EINVAL
	}
	if whiteout.IsAufsName(newName) {
		return syscall.EPERM // reserved for whiteouts
	}
	src, err := n.renameSide(name)
	if err != nil {
		return u.errno(err)
	}
	if src.found == nil {
		return syscall.ENOENT
	}
	dst, err := np.renameSide(newName)
	if err != nil {
		return u.errno(err)
	}
	if flags&unix.RENAME_EXCHANGE != 0 {
		if dst.found == nil {
			return syscall.ENOENT
		}
		if u.branched {
			return syscall.EXDEV // see branches.go
		}
		return u.errno(u.exchange(src, dst))
	}
	if dst.found != nil {
		if flags&unix.RENAME_NOREPLACE != 0 {
			return syscall.EEXIST
		}
		if dst.found.id == src.found.id {
			return 0 // two names of one file: POSIX says do nothing
		}
	}
	move := u.move
	if u.branched {
		move = u.moveBranched
	}
	if err := move(src, dst); err != nil {
		return u.errno(err)
	}
	if dst.found != nil {
		np.noteGoneDir(newName, dst.found)
	}
	return 0
}

// move renames src over dst (which may be empty). The caller holds ns
// for writing.
func (u *FS) move(src, dst *renameSide) error {
	srcDir := src.found.isDir()
	if d := dst.found; d != nil {
		switch {
		case srcDir && !d.isDir():
			return unix.ENOTDIR
		case !srcDir && d.isDir():
			return unix.EISDIR
		}
	}
	srcNode, err := src.node()
	if err != nil {
		return err
	}
	// As kernel overlay: a move it cannot record fails with EXDEV before
	// the target's emptiness is looked at.
	if err := u.refuseUnredirectableMove(srcNode, src.found, dst); err != nil {
		return err
	}
	if d := dst.found; d != nil && d.isDir() {
		entries, err := u.readMerged(dst.path, d.state, false)
		if err != nil {
			return err
		}
		if len(entries) > 0 {
			return unix.ENOTEMPTY
		}
	}
	indexedAfter, err := u.indexedMove(src, dst)
	if err != nil {
		return err
	}
	if err := u.copyUp(srcNode, true); err != nil {
		return err
	}
	if err := u.copyUp(dst.dir, true); err != nil {
		return err
	}
	if err := u.markMovedDir(src, dst); err != nil {
		return err
	}
	dstAufsWhiteout := whiteout.HasAufsWhiteout(u.upper.fd, dst.dir.path(), dst.name)
	var cur unix.Stat_t
	dstWhiteout := false
	if err := u.upper.lstat(dst.path, &cur); err == nil {
		dstWhiteout = u.markers.IsWhiteout(u.upper.fd, dst.path, &cur)
		if dst.found != nil && dst.found.isDir() && cur.Mode&unix.S_IFMT == unix.S_IFDIR {
			// Empty in the merged view: only whiteouts are left in it.
			if err := clearDirAt(u.upper.fd, dst.path); err != nil {
				return fmt.Errorf("clear %s before replacing it: %w", dst.path, err)
			}
		}
	}
	if err := u.renameInUpper(src, dst, srcDir && dstWhiteout); err != nil {
		return err
	}
	if err := indexedAfter(); err != nil {
		return err
	}
	if dstAufsWhiteout {
		return u.dropAufsWhiteout(dst.path)
	}
	return nil
}

// renameInUpper moves src to dst in the upper, leaving a whiteout at src
// when a lower layer shows that name. overWhiteout says dst holds a
// device or xattr whiteout that a directory cannot replace.
func (u *FS) renameInUpper(src, dst *renameSide, overWhiteout bool) error {
	if overWhiteout {
		// Swap the two, so the whiteout lands where the directory was.
		if err := sysx.Rename(u.upper.fd, src.path, u.upper.fd, dst.path, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		if !src.lowerHas {
			return unix.Unlinkat(u.upper.fd, src.path, 0)
		}
		return nil
	}
	if src.lowerHas && u.wformat == whiteout.Chardev {
		err := sysx.Rename(u.upper.fd, src.path, u.upper.fd, dst.path, unix.RENAME_WHITEOUT)
		if err == nil || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM)) {
			return err
		}
		// No RENAME_WHITEOUT here: rename, then whiteout.
	}
	if err := sysx.Rename(u.upper.fd, src.path, u.upper.fd, dst.path, 0); err != nil {
		return err
	}
	if src.lowerHas {
		return u.makeWhiteout(src.path)
	}
	return nil
}

// node returns the go-fuse node of the side's object; the kernel looked
// it up before asking for the rename.
func (s *renameSide) node() (*node, error) {
	child := s.dir.GetChild(s.name)
	if child == nil {
		return nil, fmt.Errorf("rename %s: not in the node tree: %w", s.path, unix.ENOENT)
	}
	cn, ok := child.Operations().(*node)
	if !ok {
		return nil, unix.EIO
	}
	return cn, nil
}

// refuseUnredirectableMove refuses (EXDEV) the move of a directory with
// lower parts when redirects are off: only a redirect could record it.
func (u *FS) refuseUnredirectableMove(srcNode *node, f *found, dst *renameSide) error {
	if f.isDir() && len(f.state.lowers) > 0 && u.opts.Redirect != RedirectOn {
		return unix.EXDEV
	}
	return nil
}

// markMovedDir makes the copied-up directory keep its merged content at
// its new name: a redirect to its lower part, or an opaque marker when it
// has no lower part but the new name has one that must not show through.
func (u *FS) markMovedDir(src, dst *renameSide) error {
	f := src.found
	if !f.isDir() {
		return nil
	}
	if len(f.state.lowers) > 0 {
		return u.markers.SetRedirect(u.upper.fd, src.path, "/"+u.lowerName(src.path))
	}
	if dst.lowerHas {
		return u.markers.SetOpaqueFormat(u.upper.fd, src.path, u.wformat)
	}
	return nil
}

// lowerName is the path under which a lookup from the lower roots finds
// the lower part of the copied-up directory at path, as kernel overlay
// writes an absolute redirect: the union path, with each directory on
// the way that has a redirect of its own (it was moved before) named by
// that redirect. Redirects in the lower layers then lead each layer's
// walk on (see walkRedirect); the path where the topmost lower part
// happens to lie would miss them.
func (u *FS) lowerName(path string) string {
	logical, dir := "", ""
	for _, name := range strings.Split(path, "/") {
		dir = join(dir, name)
		r, ok := u.markers.Redirect(u.upper.fd, dir)
		switch {
		case ok && strings.HasPrefix(r, "/"):
			logical = strings.Trim(r, "/")
		case ok && !strings.Contains(r, "/"):
			logical = join(logical, r)
		default:
			logical = join(logical, name)
		}
	}
	return logical
}

// exchange swaps two names atomically (RENAME_EXCHANGE).
func (u *FS) exchange(a, b *renameSide) error {
	// Refused before either side is copied up: a failed exchange
	// changes nothing, as in kernel overlay.
	for _, s := range []*renameSide{a, b} {
		if s.found.isDir() && len(s.found.state.lowers) > 0 && u.opts.Redirect != RedirectOn {
			return unix.EXDEV
		}
	}
	for _, s := range []*renameSide{a, b} {
		if err := u.linkIndexedSide(s); err != nil {
			return err
		}
		sn, err := s.node()
		if err != nil {
			return err
		}
		if err := u.copyUp(sn, true); err != nil {
			return err
		}
	}
	if err := u.markMovedDir(a, b); err != nil {
		return err
	}
	if err := u.markMovedDir(b, a); err != nil {
		return err
	}
	return sysx.Rename(u.upper.fd, a.path, u.upper.fd, b.path, unix.RENAME_EXCHANGE)
}

// clearDirAt empties the directory path under dirfd.
func clearDirAt(dirfd int, path string) error {
	fd, err := unix.Openat(dirfd, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ents, err := listNames(fd)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := sysx.RemoveAllAt(fd, e.name); err != nil {
			return err
		}
	}
	return nil
}
