package unionfs

import (
	"context"
	"errors"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/whiteout"
)

var _ fs.NodeLookuper = (*node)(nil)

// found is the answer of a lookup through the layers.
type found struct {
	state nodeState
	// stat is the topmost real object's attributes.
	stat unix.Stat_t
	// top is where stat came from.
	top layerRef
	id  fs.StableAttr
}

// showAttr gives the kernel a found object's attributes, with its
// recorded owner and mode under xattr_permissions.
func (u *FS) showAttr(f *found, a *fuse.Attr) {
	st := f.stat
	u.applyOverride(f.top, &st)
	u.fillAttr(a, &st)
}

func (f *found) isDir() bool { return f.stat.Mode&unix.S_IFMT == unix.S_IFDIR }

// errNotFound is the lookup answer for a name no layer shows.
var errNotFound = unix.ENOENT

// Lookup finds name in the merged directory.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.ufs.ns.RLock()
	defer n.ufs.ns.RUnlock()
	f, err := n.ufs.lookup(n.path(), n.state(), name)
	if err != nil {
		return nil, n.ufs.errno(err)
	}
	n.ufs.showAttr(f, &out.Attr)
	return n.newChild(ctx, f.state, f.id), 0
}

// lookupNode is Lookup for callers that hold ns: it finds name under
// parent and returns the child node, or errNotFound.
func (n *node) lookupNode(ctx context.Context, name string) (*node, *found, error) {
	f, err := n.ufs.lookup(n.path(), n.state(), name)
	if err != nil {
		return nil, nil, err
	}
	ino := n.newChild(ctx, f.state, f.id)
	return ino.Operations().(*node), f, nil
}

// lookup walks the layers for name in the directory at parentPath whose
// state is ps: the upper first, then each merged lower directory from
// the top down. A whiteout hides the name in every layer below it; a
// non-directory ends the search; an opaque directory stops the merge.
func (u *FS) lookup(parentPath string, ps nodeState, name string) (*found, error) {
	if whiteout.IsAufsName(name) {
		return nil, errNotFound // aufs markers never show
	}
	path := join(parentPath, name)
	var f found
	have := false
	plan := make([]layerRef, len(ps.lowers))
	for i, pl := range ps.lowers {
		plan[i] = layerRef{pl.l, join(pl.path, name)}
	}
	if ps.upper {
		err := u.upper.lstat(path, &f.stat)
		switch {
		case err == nil:
			if u.markers.IsWhiteout(u.upper.fd, path, &f.stat) {
				return nil, errNotFound
			}
			have = true
			f.state.upper = true
			f.top = layerRef{u.upper, path}
			f.id = u.identity(f.top, &f.stat)
			if u.maybeMetacopy(&f.stat) && u.markers.IsMetacopy(u.upper.fd, path) {
				return u.findMetacopyData(&f, plan)
			}
			if !f.isDir() || u.markers.IsOpaque(u.upper.fd, path) || whiteout.HasAufsWhiteout(u.upper.fd, parentPath, name) {
				return &f, nil
			}
			if r, ok := u.redirect(u.upper.fd, path); ok {
				plan = u.redirectPlan(plan, r, -1)
			}
		case !isNotFound(err):
			return nil, err
		case whiteout.HasAufsWhiteout(u.upper.fd, parentPath, name):
			return nil, errNotFound
		}
	}
	for i := 0; i < len(plan); i++ {
		ref := plan[i]
		var st unix.Stat_t
		err := ref.l.lstat(ref.path, &st)
		if isNotFound(err) {
			if whiteout.HasAufsWhiteout(ref.l.fd, dirOf(ref.path), baseOf(ref.path)) {
				break
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if u.markers.IsWhiteout(ref.l.fd, ref.path, &st) {
			break
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !have {
			have = true
			f.stat = st
			f.top = ref
			f.id = u.identity(ref, &st)
			f.state.lowers = []layerRef{ref}
			if !isDir {
				break
			}
		} else {
			if !f.isDir() || !isDir {
				break // a non-directory ends the merge
			}
			f.state.lowers = append(f.state.lowers, ref)
		}
		if u.markers.IsOpaque(ref.l.fd, ref.path) || whiteout.HasAufsWhiteout(ref.l.fd, dirOf(ref.path), baseOf(ref.path)) {
			break
		}
		if r, ok := u.redirect(ref.l.fd, ref.path); ok {
			plan = append(plan[:i+1], u.redirectPlan(plan[i+1:], r, ref.l.index)...)
		}
	}
	if !have {
		return nil, errNotFound
	}
	return &f, nil
}

// redirect reads a directory's redirect, unless redirects are not
// followed.
func (u *FS) redirect(fd int, path string) (string, bool) {
	if u.opts.Redirect == RedirectNoFollow {
		return "", false
	}
	return u.markers.Redirect(fd, path)
}

// redirectPlan rewrites the rest of a lookup plan for a redirect r found
// in layer index below (-1 for the upper): an absolute redirect names a
// path from each lower root; a relative one renames the last component.
func (u *FS) redirectPlan(rest []layerRef, r string, below int) []layerRef {
	if strings.HasPrefix(r, "/") {
		target := strings.Trim(r, "/")
		var plan []layerRef
		for _, l := range u.lowers {
			if l.index > below {
				plan = append(plan, layerRef{l, target})
			}
		}
		return plan
	}
	if strings.Contains(r, "/") {
		return nil // malformed: kernel overlay refuses it too
	}
	plan := make([]layerRef, len(rest))
	for i, ref := range rest {
		plan[i] = layerRef{ref.l, join(dirOf(ref.path), r)}
	}
	return plan
}

// lowerHas reports whether a lower layer of the directory (state ps,
// at parentPath) shows name, so that removing or moving name away in the
// upper must leave a whiteout.
func (u *FS) lowerHas(parentPath string, ps nodeState, name string) (bool, error) {
	lower := nodeState{lowers: ps.lowers}
	_, err := u.lookup(parentPath, lower, name)
	if errors.Is(err, errNotFound) {
		return false, nil
	}
	return err == nil, err
}
