package unionfs

import "github.com/hanwen/go-fuse/v2/fs"

// NodesKeepingHandleSets counts the nodes the kernel still knows, those
// with handles open, and those that hold a set of handles while none is
// open.
func (u *FS) NodesKeepingHandleSets() (nodes, open, keeping int) {
	var walk func(in *fs.Inode)
	seen := map[*fs.Inode]bool{}
	walk = func(in *fs.Inode) {
		if seen[in] {
			return
		}
		seen[in] = true
		if n, ok := in.Operations().(*node); ok {
			nodes++
			n.mu.Lock()
			switch {
			case len(n.openFiles) > 0:
				open++
			case n.openFiles != nil:
				keeping++
			}
			n.mu.Unlock()
		}
		for _, child := range in.Children() {
			walk(child)
		}
	}
	walk(&u.root.Inode)
	return nodes, open, keeping
}

// HeldDirectoryHandles counts the directories whose listing handle the
// union holds for reads that come without an open; implicit reports
// whether the kernel reads directories without opening them at all.
func (u *FS) HeldDirectoryHandles() (held int, implicit bool) {
	return u.dirs.heldHandles(), u.dirs.noOpendir
}
