package unionfs

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// namespaceChanges holds FS.ns for writing across the whole of an
// unlink, rmdir or rename request: the union's change in the layers and
// go-fuse's move of the node in its tree, which it makes after the node's
// method returns. Were ns released in between, a request on the moved or
// removed node (an OPEN racing the rename, say) would take ns for reading
// and build the node's old path, which in the upper layer may now hold
// the whiteout the change left there.
//
// Preconditions of node.Unlink, Rmdir and Rename: ns is held for
// writing, by this layer.
type namespaceChanges struct {
	fuse.RawFileSystem
	u *FS
}

func (s *namespaceChanges) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	s.u.ns.Lock()
	defer s.u.ns.Unlock()
	return s.RawFileSystem.Unlink(cancel, h, name)
}

func (s *namespaceChanges) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	s.u.ns.Lock()
	defer s.u.ns.Unlock()
	return s.RawFileSystem.Rmdir(cancel, h, name)
}

func (s *namespaceChanges) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	s.u.ns.Lock()
	defer s.u.ns.Unlock()
	return s.RawFileSystem.Rename(cancel, in, oldName, newName)
}
