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
	u.showIndexNlink(f.top, &st)
	u.applyOverride(f.top, &st)
	u.fillAttr(a, &st)
}

func (f *found) isDir() bool { return f.stat.Mode&unix.S_IFMT == unix.S_IFDIR }

// errNoSuchName is the lookup answer for a name no layer shows.
var errNoSuchName = unix.ENOENT

// Lookup finds name in the merged directory.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.ufs.ns.RLock()
	defer n.ufs.ns.RUnlock()
	f, err := n.ufs.lookup(n.path(), n.state(), name)
	if err != nil {
		return nil, n.ufs.errno(err)
	}
	n.ufs.showAttr(f, &out.Attr)
	if n.ufs.branched {
		n.refreshChild(name, f)
	}
	return n.newChild(ctx, f.state, f.id), 0
}

// lookupNode is Lookup for callers that hold ns: it finds name under
// parent and returns the child node, or errNoSuchName.
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
		return nil, errNoSuchName // aufs markers never show
	}
	path := join(parentPath, name)
	var f found
	have := false
	plan := make([]planStep, len(ps.lowers))
	for i, pl := range ps.lowers {
		plan[i] = planStep{ref: layerRef{pl.l, join(pl.path, name)}}
	}
	if ps.upper {
		err := u.upper.lstat(path, &f.stat)
		switch {
		case err == nil:
			if u.markers.IsWhiteout(u.upper.fd, path, &f.stat) {
				return nil, errNoSuchName
			}
			have = true
			f.state.upper = true
			f.top = layerRef{u.upper, path}
			f.id = u.identity(f.top, &f.stat)
			if u.maybeMetacopy(&f.stat) && u.markers.IsMetacopy(u.upper.fd, path) {
				return u.findMetacopyData(&f, plan)
			}
			if !f.isDir() {
				u.findUpperInIndex(&f)
				return &f, nil
			}
			if u.markers.IsOpaque(u.upper.fd, path) || whiteout.HasAufsWhiteout(u.upper.fd, parentPath, name) {
				return &f, nil
			}
			if r, ok := u.redirect(u.upper.fd, path); ok {
				plan = u.redirectPlan(plan, r, -1)
			}
		case !isMissingInLayer(err):
			return nil, err
		case whiteout.HasAufsWhiteout(u.upper.fd, parentPath, name):
			return nil, errNoSuchName
		}
	}
	for i := 0; i < len(plan); i++ {
		ref := plan[i].ref
		stopHere := false
		if plan[i].fromRoot {
			w, err := u.walkRedirect(ref)
			if err != nil {
				return nil, err
			}
			if w.rewrite != "" {
				plan = append(plan[:i+1], u.redirectPlan(plan[i+1:], w.rewrite, ref.l.index)...)
			}
			if w.absent {
				if w.stop {
					break
				}
				continue
			}
			stopHere = w.stop
		}
		var st unix.Stat_t
		err := ref.l.lstat(ref.path, &st)
		if isMissingInLayer(err) {
			if stopHere || whiteout.HasAufsWhiteout(ref.l.fd, dirOf(ref.path), baseOf(ref.path)) {
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
				if err := u.findLowerInIndex(&f); err != nil {
					return nil, err
				}
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
		r, redirected := u.redirect(ref.l.fd, ref.path)
		if redirected {
			plan = append(plan[:i+1], u.redirectPlan(plan[i+1:], r, ref.l.index)...)
		}
		if stopHere && !(redirected && strings.HasPrefix(r, "/")) {
			break // an opaque directory above it in this layer
		}
	}
	if !have {
		return nil, errNoSuchName
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

// planStep is one layer a lookup looks in. fromRoot marks a path taken
// from an absolute redirect: its parent directories in that layer were
// never looked at, so they are walked first (see walkRedirect).
type planStep struct {
	ref      layerRef
	fromRoot bool
}

// redirectPlan rewrites the rest of a lookup plan for a redirect r found
// in layer index below (-1 for the upper): an absolute redirect names a
// path from each lower root, walked there from the root; a relative one
// renames the last component.
func (u *FS) redirectPlan(rest []planStep, r string, below int) []planStep {
	if strings.HasPrefix(r, "/") {
		target := strings.Trim(r, "/")
		var plan []planStep
		for _, l := range u.lowers {
			if l.index > below {
				plan = append(plan, planStep{layerRef{l, target}, true})
			}
		}
		return plan
	}
	if strings.Contains(r, "/") {
		return nil // malformed: kernel overlay refuses it too
	}
	plan := make([]planStep, len(rest))
	for i, step := range rest {
		plan[i] = planStep{layerRef{step.ref.l, join(dirOf(step.ref.path), r)}, step.fromRoot}
	}
	return plan
}

// walked is what walkRedirect found on the way to a redirect's target in
// one layer.
type walked struct {
	// absent: the layer holds nothing at the path (a parent is missing,
	// a whiteout, or not a directory).
	absent bool
	// stop: the layers below are not looked in (a whiteout, a
	// non-directory or an opaque directory on the way).
	stop bool
	// rewrite, if set, is a redirect of a parent on the way, rewritten
	// to name the target itself: the layers below look there instead.
	rewrite string
}

// walkRedirect walks the parent directories of ref.path in its layer from
// the root, as kernel overlay's lookup walks an absolute redirect
// component by component: a whiteout or a non-directory (a symlink
// included: it is never followed) on the way means the layer holds
// nothing there and hides the path in every layer below; an opaque
// directory hides it below but this layer still counts; a redirect of a
// parent changes where the layers below look.
func (u *FS) walkRedirect(ref layerRef) (walked, error) {
	var w walked
	dir := ""     // where the walk is in this layer
	logical := "" // the same place as the layers below name it
	moved := false
	rest := ref.path
	for {
		name, after, more := strings.Cut(rest, "/")
		if !more {
			if moved {
				w.rewrite = "/" + join(logical, rest)
			}
			return w, nil // the parents are whole: the caller looks at the target
		}
		if whiteout.HasAufsWhiteout(ref.l.fd, dir, name) {
			return walked{absent: true, stop: true}, nil
		}
		p := join(dir, name)
		var st unix.Stat_t
		err := ref.l.lstat(p, &st)
		if isMissingInLayer(err) {
			w.absent = true
			return w, nil
		}
		if err != nil {
			return w, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR || u.markers.IsWhiteout(ref.l.fd, p, &st) {
			return walked{absent: true, stop: true}, nil
		}
		next := join(logical, name)
		if u.markers.IsOpaque(ref.l.fd, p) {
			w.stop = true
		} else if r, ok := u.redirect(ref.l.fd, p); ok {
			switch {
			case strings.HasPrefix(r, "/"):
				next, moved, w.stop = strings.Trim(r, "/"), true, false
			case !strings.Contains(r, "/"):
				next, moved = join(logical, r), true
			}
		}
		dir, logical, rest = p, next, after
	}
}

// lowerHas reports whether a lower layer of the directory (state ps,
// at parentPath) shows name, so that removing or moving name away in the
// upper must leave a whiteout.
func (u *FS) lowerHas(parentPath string, ps nodeState, name string) (bool, error) {
	lower := nodeState{lowers: ps.lowers}
	_, err := u.lookup(parentPath, lower, name)
	if errors.Is(err, errNoSuchName) {
		return false, nil
	}
	return err == nil, err
}
