package unionfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/whiteout"
)

// Changes in a branched union (see branches.go). Every function here
// expects ns held, as its overlay counterpart does: for writing where it
// changes names.

// prepareBranchWork makes the writable branch l's scratch dir inside it,
// empty (what an interrupted change left there is thrown away).
func (u *FS) prepareBranchWork(l *layer) error {
	dir := filepath.Join(l.path, workDirName)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clear work dir %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create work dir %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open work dir %s: %w", dir, err)
	}
	l.work = fd
	return nil
}

// setUpBranched settles the marker namespace and the whiteout format of
// a branched union, probing its topmost writable branch.
func (u *FS) setUpBranched() {
	w := u.writableAbove(len(u.lowers))
	if !u.opts.UserXattr && !trustedXattrsIn(w.work) {
		u.logger.Printf("trusted.* xattrs cannot be written on %s: keeping markers in user.*", w.path)
		u.markers.Prefix = whiteout.UserPrefix
		u.idXattr = "user.unionmount.id"
	}
	if u.wauto {
		u.wformat = whiteout.Aufs // what aufs tools expect in its branches
	}
}

// writeLayer is the layer where changes to n are made once it has been
// copied up: the upper, or in a branched union the writable branch that
// holds n's topmost copy.
func (u *FS) writeLayer(n *node) *layer {
	if !u.branched {
		return u.upper
	}
	if st := n.state(); len(st.lowers) > 0 {
		return st.lowers[0].l
	}
	return nil
}

// writableAbove returns the topmost writable branch above the layer of
// the given index, or nil.
func (u *FS) writableAbove(index int) *layer {
	for _, l := range u.lowers {
		if l.index >= index {
			break
		}
		if l.writable {
			return l
		}
	}
	return nil
}

// withRef returns refs with r added in layer order; a ref of r's layer is
// replaced.
func withRef(refs []layerRef, r layerRef) []layerRef {
	out := make([]layerRef, 0, len(refs)+1)
	placed := false
	for _, x := range refs {
		if x.l == r.l {
			continue
		}
		if !placed && x.l.index > r.l.index {
			out = append(out, r)
			placed = true
		}
		out = append(out, x)
	}
	if !placed {
		out = append(out, r)
	}
	return out
}

// copyUpBranched makes n's topmost copy lie on a writable branch: an
// object on a read-only branch is copied to the topmost writable branch
// above it, its parents first; EROFS when there is none.
func (u *FS) copyUpBranched(n *node, withData bool) error {
	st := n.state()
	if len(st.lowers) == 0 {
		return fmt.Errorf("copy-up %s: %w", n.path(), unix.ENOENT)
	}
	if st.lowers[0].l.writable {
		return nil
	}
	target := u.writableAbove(st.lowers[0].l.index)
	if target == nil {
		return unix.EROFS
	}
	if p := n.parentNode(); p != nil {
		if err := u.ensureDirOn(p, target); err != nil {
			return err
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.st.lowers) == 0 {
		return fmt.Errorf("copy-up %s: %w", n.path(), unix.ENOENT)
	}
	if n.st.lowers[0].l.writable {
		return nil // a racing writer copied it
	}
	path := n.path()
	src := n.st.lowers[0]
	isDir, err := u.copyObjectTo(src, target, path, n.StableAttr(), withData)
	if err != nil {
		return fmt.Errorf("copy-up %s to %s: %w", path, target.path, err)
	}
	if isDir {
		n.st.lowers = withRef(n.st.lowers, layerRef{target, path})
	} else {
		n.st.lowers = []layerRef{{target, path}}
	}
	return nil
}

// ensureDirOn makes directory d exist on branch t, copying it (and its
// parents) there from its topmost copy when it does not.
func (u *FS) ensureDirOn(d *node, t *layer) error {
	has := func(st nodeState) bool {
		for _, r := range st.lowers {
			if r.l == t {
				return true
			}
		}
		return false
	}
	if has(d.state()) {
		return nil
	}
	if p := d.parentNode(); p != nil {
		if err := u.ensureDirOn(p, t); err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if has(d.st) {
		return nil
	}
	path := d.path()
	if len(d.st.lowers) == 0 {
		return fmt.Errorf("copy-up %s: %w", path, unix.ENOENT)
	}
	if _, err := u.copyObjectTo(d.st.lowers[0], t, path, d.StableAttr(), false); err != nil {
		return fmt.Errorf("copy-up dir %s to %s: %w", path, t.path, err)
	}
	d.st.lowers = withRef(d.st.lowers, layerRef{t, path})
	return nil
}

// copyObjectTo copies src to path on branch t through t's scratch dir,
// complete before it is renamed into place. A directory is copied
// without its entries.
func (u *FS) copyObjectTo(src layerRef, t *layer, path string, id fs.StableAttr, withData bool) (isDir bool, err error) {
	var st unix.Stat_t
	if err := src.l.lstat(src.path, &st); err != nil {
		return false, err
	}
	tmp := tempName()
	kind := st.Mode & unix.S_IFMT
	isDir = kind == unix.S_IFDIR
	defer func() {
		if err != nil {
			sysx.RemoveAllAt(t.work, tmp)
		}
	}()
	switch kind {
	case unix.S_IFDIR:
		err = unix.Mkdirat(t.work, tmp, 0o700)
	case unix.S_IFREG:
		err = u.copyFileIn(t.work, src, tmp, &st, withData)
	case unix.S_IFLNK:
		buf := make([]byte, unix.PathMax)
		var got int
		if got, err = unix.Readlinkat(src.l.fd, rel(src.path), buf); err == nil {
			err = unix.Symlinkat(string(buf[:got]), t.work, tmp)
		}
	default:
		err = unix.Mknodat(t.work, tmp, st.Mode, int(st.Rdev))
	}
	if err != nil {
		return isDir, err
	}
	if err := u.copyMetadataIn(t.work, src, tmp, &st, id); err != nil {
		return isDir, err
	}
	return isDir, installOn(t, tmp, path, unix.RENAME_NOREPLACE)
}

// installOn renames tmp from branch t's scratch dir to path on t,
// keeping the parent directory's times.
func installOn(t *layer, tmp, path string, flags uint) error {
	parent := dirOf(path)
	var pst unix.Stat_t
	haveParent := t.lstat(parent, &pst) == nil
	if err := sysx.Rename(t.work, tmp, t.fd, path, flags); err != nil {
		return fmt.Errorf("install %s on %s: %w", path, t.path, err)
	}
	if haveParent {
		unix.UtimesNanoAt(t.fd, rel(parent), []unix.Timespec{pst.Atim, pst.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// hiddenAt returns the index of the branch whose whiteout hides name in
// the directory (state ps), or -1 when no whiteout does: a new object
// must go on that branch or above it to show.
func (u *FS) hiddenAt(ps nodeState, name string) int {
	for _, r := range ps.lowers {
		if whiteout.HasAufsWhiteout(r.l.fd, r.path, name) {
			return r.l.index
		}
		var st unix.Stat_t
		p := join(r.path, name)
		if r.l.lstat(p, &st) == nil && u.markers.IsWhiteout(r.l.fd, p, &st) {
			return r.l.index
		}
	}
	return -1
}

// createBranched is create for a branched union: the object is made on
// the branch the create policy picks (a hard link on its source's).
func (n *node) createBranched(ctx context.Context, obj newObject) (*found, error) {
	u := n.ufs
	parentPath := n.path()
	path := join(parentPath, obj.name)
	ps := n.state()
	if _, err := u.lookup(parentPath, ps, obj.name); err == nil {
		return nil, unix.EEXIST
	} else if !errors.Is(err, errNoSuchName) {
		return nil, err
	}
	limit := u.hiddenAt(ps, obj.name)
	t := obj.on
	if t == nil {
		var err error
		if t, err = u.createTarget(ps, limit); err != nil {
			return nil, err
		}
	} else if limit >= 0 && t.index > limit {
		return nil, unix.EXDEV // the link would be hidden on its file's branch
	}
	if err := u.ensureDirOn(n, t); err != nil {
		return nil, err
	}
	var existing unix.Stat_t
	overWhiteout := false
	if err := t.lstat(path, &existing); err == nil {
		if !u.markers.IsWhiteout(t.fd, path, &existing) {
			return nil, unix.EEXIST
		}
		overWhiteout = true
	} else if !isMissingInLayer(err) {
		return nil, err
	}
	aufsWhiteout := whiteout.HasAufsWhiteout(t.fd, parentPath, obj.name)
	tmp := tempName()
	if err := obj.make(t.work, tmp); err != nil {
		return nil, err
	}
	if obj.own {
		if err := u.chownToCallerOn(ctx, t, t.work, parentPath, tmp, obj); err != nil {
			sysx.RemoveAllAt(t.work, tmp)
			return nil, err
		}
	}
	if obj.isDir && (overWhiteout || aufsWhiteout) {
		if err := u.markers.SetOpaqueFormat(t.work, tmp, u.wformat); err != nil {
			sysx.RemoveAllAt(t.work, tmp)
			return nil, err
		}
	}
	flags := uint(unix.RENAME_NOREPLACE)
	switch {
	case overWhiteout && obj.isDir:
		flags = unix.RENAME_EXCHANGE
	case overWhiteout:
		flags = 0
	}
	if err := sysx.Rename(t.work, tmp, t.fd, path, flags); err != nil {
		sysx.RemoveAllAt(t.work, tmp)
		return nil, err
	}
	if flags == unix.RENAME_EXCHANGE {
		unix.Unlinkat(t.work, tmp, 0) // the whiteout it replaced
	}
	if aufsWhiteout {
		if err := unix.Unlinkat(t.fd, join(parentPath, whiteout.AufsWhiteoutOf(obj.name)), 0); err != nil && !isMissingInLayer(err) {
			return nil, fmt.Errorf("remove the whiteout of %s: %w", path, err)
		}
	}
	var f found
	if err := t.lstat(path, &f.stat); err != nil {
		return nil, err
	}
	f.top = layerRef{t, path}
	f.state.lowers = []layerRef{f.top}
	if obj.own {
		f.id = u.identityFrom(f.top, &f.stat, nil, unix.ENODATA)
	} else {
		f.id = u.identity(f.top, &f.stat)
	}
	return &f, nil
}

// removeBranched removes name (found as f) from directory n: from its
// branch when that is writable, and with a whiteout on the writable
// branch that hides it when a branch below still shows the name (or the
// object itself is on a read-only branch).
func (n *node) removeBranched(name string, f *found) error {
	u := n.ufs
	parentPath := n.path()
	path := join(parentPath, name)
	top := f.state.lowers[0]
	var below nodeState
	for _, r := range n.state().lowers {
		if r.l.index > top.l.index {
			below.lowers = append(below.lowers, r)
		}
	}
	needWhiteout, err := u.lowerHas(parentPath, below, name)
	if err != nil {
		return err
	}
	if !top.l.writable {
		t := u.writableAbove(top.l.index)
		if t == nil {
			return unix.EROFS
		}
		if err := u.ensureDirOn(n, t); err != nil {
			return err
		}
		return u.whiteoutOn(t, path)
	}
	t := top.l
	if f.isDir() {
		// Only whiteouts are left in it: move it out, then hide.
		tmp := tempName()
		if err := sysx.Rename(t.fd, top.path, t.work, tmp, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("move %s to the work dir: %w", path, err)
		}
		if err := sysx.RemoveAllAt(t.work, tmp); err != nil {
			return err
		}
	} else if !needWhiteout {
		return unix.Unlinkat(t.fd, top.path, 0)
	}
	if needWhiteout {
		return u.whiteoutOn(t, path)
	}
	return nil
}

// whiteoutOn hides path on writable branch t, removing what t holds
// there once the whiteout stands.
func (u *FS) whiteoutOn(t *layer, path string) error {
	tmp := tempName()
	if err := u.markers.PrepareWhiteout(t.work, tmp, u.wformat); err != nil {
		return err
	}
	parent, name := dirOf(path), baseOf(path)
	target := path
	switch u.wformat {
	case whiteout.Aufs:
		target = join(parent, whiteout.AufsWhiteoutOf(name))
	case whiteout.Xattr:
		if err := u.markers.MarkHoldsXattrWhiteouts(t.fd, rel(parent)); err != nil {
			unix.Unlinkat(t.work, tmp, 0)
			return err
		}
	}
	if err := sysx.Rename(t.work, tmp, t.fd, target, 0); err != nil {
		unix.Unlinkat(t.work, tmp, 0)
		return fmt.Errorf("install whiteout %s on %s: %w", path, t.path, err)
	}
	if u.wformat == whiteout.Aufs {
		if err := unix.Unlinkat(t.fd, path, 0); err != nil && !isMissingInLayer(err) {
			return fmt.Errorf("remove %s behind its whiteout: %w", path, err)
		}
	}
	return nil
}

// moveBranched renames a non-directory within its writable branch; any
// other rename is EXDEV (see branches.go).
func (u *FS) moveBranched(src, dst *renameSide) error {
	if src.found.isDir() {
		return unix.EXDEV
	}
	top := src.found.state.lowers[0]
	t := top.l
	if !t.writable {
		return unix.EXDEV
	}
	if d := dst.found; d != nil && (d.isDir() || d.state.lowers[0].l != t) {
		// Replacing an object of another branch would leave it there,
		// hidden but still linked (or showing, from a branch above).
		return unix.EXDEV
	}
	dstState := dst.dir.state()
	if limit := u.hiddenAt(dstState, dst.name); limit >= 0 && limit < t.index {
		return unix.EXDEV
	}
	// The new name must show: t must hold the target dir or lie above
	// its last merged copy.
	if len(dstState.lowers) == 0 || dstState.lowers[len(dstState.lowers)-1].l.index < t.index {
		return unix.EXDEV
	}
	if err := u.ensureDirOn(dst.dir, t); err != nil {
		return err
	}
	var below nodeState
	for _, r := range src.dir.state().lowers {
		if r.l.index > t.index {
			below.lowers = append(below.lowers, r)
		}
	}
	needWhiteout, err := u.lowerHas(src.dir.path(), below, src.name)
	if err != nil {
		return err
	}
	srcNode, err := src.node()
	if err != nil {
		return err
	}
	if err := sysx.Rename(t.fd, top.path, t.fd, dst.path, 0); err != nil {
		return err
	}
	// Its copy on t now lies at the new name.
	srcNode.setState(nodeState{lowers: []layerRef{{t, dst.path}}})
	if err := unix.Unlinkat(t.fd, join(dst.dir.path(), whiteout.AufsWhiteoutOf(dst.name)), 0); err != nil && !isMissingInLayer(err) {
		return fmt.Errorf("remove the whiteout of %s: %w", dst.path, err)
	}
	if needWhiteout {
		return u.whiteoutOn(t, src.path)
	}
	return nil
}

// refreshChild gives the node the kernel already knows under name, when
// it is the object just found as f, f's state: go-fuse keeps the known
// node and drops a new one, and a branch may have changed underneath
// (aufs's udba=reval). A state whose top lies lower than the known one's
// is kept out: it may come from a lookup that raced a copy-up.
func (n *node) refreshChild(name string, f *found) {
	c := n.GetChild(name)
	if c == nil || c.StableAttr() != f.id || len(f.state.lowers) == 0 {
		return
	}
	cn, ok := c.Operations().(*node)
	if !ok {
		return
	}
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if len(cn.st.lowers) == 0 || f.state.lowers[0].l.index <= cn.st.lowers[0].l.index {
		cn.st = f.state
	}
}
