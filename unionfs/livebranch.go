package unionfs

import (
	"fmt"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// Branches added and removed on a live mount, as aufs's
// remount,append:DIR and remount,del:DIR do (a FUSE remount never
// reaches the daemon, so `unionmount branch` asks it over its control
// socket).
//
// A branch is added read-only, at the bottom of the stack (Docker's aufs
// driver appends image layers that way) or, in a union with no upper, on
// top (the layers are renumbered under ns). Under ns held for writing, the
// stack gets the layer and every directory node the kernel knows is
// looked up again so it merges the new branch; then, without ns, the
// kernel's cached listings of those directories and its cached negative
// entries of the new branch's names are dropped (a notify must not wait
// on a request that waits on ns).
//
// A branch is removed only when nothing on the mount uses it (EBUSY
// otherwise, as aufs): the kernel is first asked to drop its cached
// entries of every node that holds a copy on the branch, and the removal
// is refused if such nodes remain (an open file, a current directory,
// an entry the kernel would not drop).

// AddBranch adds a read-only branch at the bottom of the union, or with
// prepend on top (only where no writable upper holds the top).
func (u *FS) AddBranch(b Branch, prepend bool) error {
	if b.Writable() {
		return badOption("branch %s: a branch added to a live mount is read-only here (ro, rr or ro+wh)", b.Path)
	}
	dir, err := checkDir("branch", b.Path)
	if err != nil {
		return err
	}
	u.ns.Lock()
	for _, l := range u.allLayers() {
		if overlaps(l.path, dir) {
			u.ns.Unlock()
			return badOption("branch %s overlaps branch %s", dir, l.path)
		}
	}
	if prepend && u.upper != nil {
		u.ns.Unlock()
		return badOption("branch %s: the writable branch %s stays on top: add below it", dir, u.upper.path)
	}
	index := u.lowers[len(u.lowers)-1].index + 1
	if prepend {
		index = u.lowers[0].index
	}
	l, err := openLayer(index, dir, false)
	if err != nil {
		u.ns.Unlock()
		return err
	}
	l.inoBits = u.inoBitsFor(l.dev)
	nb := Branch{Path: dir, Mode: b.Mode, Attrs: b.Attrs}
	root := u.rootNode()
	root.mu.Lock()
	if prepend {
		for _, x := range u.lowers {
			x.index++
		}
		u.lowers = append([]*layer{l}, u.lowers...)
		if u.branched {
			u.opts.Branches = append([]Branch{nb}, u.opts.Branches...)
		}
		root.st.lowers = append([]layerRef{{l, ""}}, root.st.lowers...)
	} else {
		u.lowers = append(append([]*layer{}, u.lowers...), l)
		if u.branched {
			u.opts.Branches = append(append([]Branch{}, u.opts.Branches...), nb)
		}
		root.st.lowers = append(append([]layerRef{}, root.st.lowers...), layerRef{l, ""})
	}
	root.mu.Unlock()
	dirs := u.relookDirs(root)
	u.ns.Unlock()

	// The new branch's names were absent until now: drop the kernel's
	// negative entries and listings of the directories it knows.
	for _, d := range dirs {
		d.NotifyContent(0, 0)
		fd, err := l.open(d.path(), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			continue
		}
		names, _ := listNames(fd)
		unix.Close(fd)
		for _, e := range names {
			d.NotifyEntry(e.name)
		}
	}
	return nil
}

// DelBranch removes the branch at path, which must be a read-only one
// other than the last.
func (u *FS) DelBranch(path string) error {
	dir, err := checkDir("branch", path)
	if err != nil {
		return err
	}
	u.ns.RLock()
	var l *layer
	for _, x := range u.lowers {
		if x.path == dir {
			l = x
		}
	}
	u.ns.RUnlock()
	switch {
	case l == nil && u.upper != nil && u.upper.path == dir:
		return fmt.Errorf("branch %s is the writable branch on top: %w", dir, unix.EBUSY)
	case l == nil:
		return badOption("%s is not a branch of this union", dir)
	case l.writable:
		return fmt.Errorf("branch %s is writable: only read-only branches are removed live: %w", dir, unix.EBUSY)
	case len(u.lowers) == 1:
		return fmt.Errorf("branch %s is the union's last: %w", dir, unix.EBUSY)
	}
	root := u.rootNode()
	// Ask the kernel to forget what it caches of the branch, then wait
	// a little for its FORGETs.
	for try := 0; ; try++ {
		users := u.branchUsers(root, l)
		if len(users) == 0 {
			break
		}
		if try == 20 {
			return fmt.Errorf("branch %s is in use (%s, and %d more): %w", dir, deepest(users), len(users)-1, unix.EBUSY)
		}
		for _, n := range users {
			if p := n.parentNode(); p != nil {
				name, _ := n.Parent()
				p.NotifyEntry(name)
			}
		}
		time.Sleep(time.Duration(try+1) * 5 * time.Millisecond)
	}
	u.ns.Lock()
	if users := u.branchUsers(root, l); len(users) > 0 {
		u.ns.Unlock()
		return fmt.Errorf("branch %s is in use (%s): %w", dir, deepest(users), unix.EBUSY)
	}
	var kept []*layer
	for _, x := range u.lowers {
		if x != l {
			kept = append(kept, x)
		}
	}
	u.lowers = kept
	if u.branched {
		var bs []Branch
		for _, b := range u.opts.Branches {
			if b.Path != dir {
				bs = append(bs, b)
			}
		}
		u.opts.Branches = bs
	}
	merged := u.stripBranch(root, l)
	u.ns.Unlock()
	// No node refers to the branch any more: a handle open on it would
	// have kept its node. Listings the kernel cached of the directories
	// that merged it go.
	l.close()
	for _, d := range merged {
		d.NotifyContent(0, 0)
	}
	return nil
}

// Branches returns the union's branches, topmost first.
func (u *FS) Branches() []Branch {
	u.ns.RLock()
	defer u.ns.RUnlock()
	var out []Branch
	if u.upper != nil {
		out = append(out, Branch{Path: u.upper.path, Mode: "rw"})
	}
	for _, l := range u.lowers {
		mode := "ro"
		if l.writable {
			mode = "rw"
		}
		out = append(out, Branch{Path: l.path, Mode: mode})
	}
	return out
}

// stripBranch drops l from the merged layers of every directory node
// the kernel knows, and returns those nodes. The caller holds ns for
// writing.
func (u *FS) stripBranch(root *node, l *layer) []*node {
	var out []*node
	var walk func(d *node)
	walk = func(d *node) {
		d.mu.Lock()
		var refs []layerRef
		for _, r := range d.st.lowers {
			if r.l != l {
				refs = append(refs, r)
			}
		}
		changed := len(refs) != len(d.st.lowers)
		d.st.lowers = refs
		d.mu.Unlock()
		if changed {
			out = append(out, d)
		}
		for _, c := range d.Children() {
			if cn, ok := c.Operations().(*node); ok && c.StableAttr().Mode == unix.S_IFDIR {
				walk(cn)
			}
		}
	}
	walk(root)
	return out
}

// deepest names the user deepest in the tree: what holds the rest (an
// open file holds its parent dirs).
func deepest(users []*node) string {
	best := ""
	for _, n := range users {
		if p := n.path(); len(p) > len(best) {
			best = p
		}
	}
	return best
}

// allLayers returns the upper (if any) and the lowers. The caller holds
// ns.
func (u *FS) allLayers() []*layer {
	if u.upper == nil {
		return u.lowers
	}
	return append([]*layer{u.upper}, u.lowers...)
}

// inoBitsFor returns the inode tag of a filesystem, a new one for a
// filesystem no layer is on. The caller holds ns for writing.
func (u *FS) inoBitsFor(dev uint64) uint64 {
	max := uint64(0)
	for _, l := range u.allLayers() {
		if l.dev == dev {
			return l.inoBits
		}
		if l.inoBits>>56 > max {
			max = l.inoBits >> 56
		}
	}
	return (max + 1) << 56
}

// rootNode is the union's root node.
func (u *FS) rootNode() *node { return u.root }

// relookDirs looks every directory node the kernel knows up again, from
// the root down, so their merged layers include a new branch, and
// returns them. The caller holds ns for writing.
func (u *FS) relookDirs(root *node) []*node {
	out := []*node{root}
	for i := 0; i < len(out); i++ {
		d := out[i]
		st, path := d.state(), d.path()
		for name, c := range d.Children() {
			cn, ok := c.Operations().(*node)
			if !ok || c.StableAttr().Mode != unix.S_IFDIR {
				continue
			}
			f, err := u.lookup(path, st, name)
			if err != nil || !f.isDir() || f.id != c.StableAttr() {
				continue
			}
			cn.mu.Lock()
			if f.state.upper == cn.st.upper {
				cn.st.lowers = f.state.lowers
			}
			cn.mu.Unlock()
			out = append(out, cn)
		}
	}
	return out
}

// branchUsers returns the nodes the kernel knows that hold a copy on l,
// the root aside.
func (u *FS) branchUsers(root *node, l *layer) []*node {
	var users []*node
	var walk func(d *fs.Inode)
	walk = func(d *fs.Inode) {
		for _, c := range d.Children() {
			cn, ok := c.Operations().(*node)
			if !ok {
				continue
			}
			if st := cn.state(); len(st.lowers) > 0 && (!(c.StableAttr().Mode == unix.S_IFDIR) || !st.upper && st.lowers[0].l == l) {
				// A directory merging the branch below its top copy is
				// not a user: it just stops merging it.
				for _, r := range st.lowers {
					if r.l == l {
						users = append(users, cn)
						break
					}
				}
			}
			walk(c)
		}
	}
	walk(root.EmbeddedInode())
	return users
}
