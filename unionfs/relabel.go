package unionfs

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Inode numbers of broken-apart hard links.
//
// The names of a lower hard link share the lower inode's number (tar and
// du count them once). A copy-up breaks the name it copies away from the
// others, as kernel overlay without its index feature does, and the copy
// then shows the upper file's inode number, as the kernel shows it: two
// files with different content must not share one. The node keeps its
// identity in the node tree (links of the copy and later lookups find the
// same node through the recorded id, see identityFrom), so only the
// number shown changes. go-fuse writes a node's identity into every reply
// that carries attributes; relabels rewrites those replies for the nodes
// whose shown number is not their identity's. Only names of lower hard
// links carry a generation (see identityFrom), so every other reply is
// left alone after one atomic load.

// idKey is a node identity without its file type.
type idKey struct{ ino, gen uint64 }

// relabels maps identities to the inode number shown for them, and the
// kernel's node ids of nodes that may be relabelled to their identity.
type relabels struct {
	// tracked counts the node ids held in nodes: zero skips every map.
	tracked atomic.Int64

	// mu is a leaf lock: it is taken under ns and node.mu, and nothing
	// is taken while it is held.
	mu    sync.RWMutex
	shown map[idKey]uint64 // guarded by mu
	// nodes are the node ids the kernel holds for identities with a
	// generation, learnt from the replies that gave them out, for the
	// requests that name a node by id alone (GETATTR, SETATTR).
	nodes map[uint64]idKey // guarded by mu
}

func newRelabels() *relabels {
	return &relabels{shown: map[idKey]uint64{}, nodes: map[uint64]idKey{}}
}

// set makes the identity id show inode number ino.
func (r *relabels) set(id fs.StableAttr, ino uint64) {
	k := idKey{id.Ino, id.Gen}
	r.mu.RLock()
	old, ok := r.shown[k]
	r.mu.RUnlock()
	if ok && old == ino {
		return
	}
	r.mu.Lock()
	r.shown[k] = ino
	r.mu.Unlock()
}

// ino returns the inode number shown for id.
func (r *relabels) ino(id fs.StableAttr) uint64 {
	if id.Gen == 0 {
		return id.Ino
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if ino, ok := r.shown[idKey{id.Ino, id.Gen}]; ok {
		return ino
	}
	return id.Ino
}

// entry notes the node id of an entry reply and rewrites its number.
func (r *relabels) entry(out *fuse.EntryOut) {
	if out.Generation == 0 || out.NodeId == 0 {
		return
	}
	k := idKey{out.Attr.Ino, out.Generation}
	r.mu.Lock()
	if _, ok := r.nodes[out.NodeId]; !ok {
		r.nodes[out.NodeId] = k
		r.tracked.Add(1)
	}
	if ino, ok := r.shown[k]; ok {
		out.Attr.Ino = ino
	}
	r.mu.Unlock()
}

// attr rewrites the number in an attribute reply for node id nodeID.
func (r *relabels) attr(nodeID uint64, a *fuse.Attr) {
	if r.tracked.Load() == 0 {
		return
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if k, ok := r.nodes[nodeID]; ok {
		if ino, ok := r.shown[k]; ok {
			a.Ino = ino
		}
	}
}

func (r *relabels) forget(nodeID uint64) {
	if r.tracked.Load() == 0 {
		return
	}
	r.mu.Lock()
	if _, ok := r.nodes[nodeID]; ok {
		delete(r.nodes, nodeID)
		r.tracked.Add(-1)
	}
	r.mu.Unlock()
}

// relabelReplies is the FUSE layer that applies relabels to replies.
type relabelReplies struct {
	fuse.RawFileSystem
	r *relabels
}

func (s *relabelReplies) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := s.RawFileSystem.Lookup(cancel, h, name, out)
	if st.Ok() {
		s.r.entry(out)
	}
	return st
}

func (s *relabelReplies) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	st := s.RawFileSystem.Link(cancel, in, name, out)
	if st.Ok() {
		s.r.entry(out)
	}
	return st
}

func (s *relabelReplies) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := s.RawFileSystem.GetAttr(cancel, in, out)
	if st.Ok() {
		s.r.attr(in.NodeId, &out.Attr)
	}
	return st
}

func (s *relabelReplies) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := s.RawFileSystem.SetAttr(cancel, in, out)
	if st.Ok() {
		s.r.attr(in.NodeId, &out.Attr)
	}
	return st
}

func (s *relabelReplies) Forget(nodeID, nlookup uint64) {
	s.r.forget(nodeID)
	s.RawFileSystem.Forget(nodeID, nlookup)
}

// ReadDirPlus rewrites the entries of the listing, which go-fuse has laid
// out in the kernel's format: an entry reply, then the directory entry
// (inode number, offset, name length, type, name padded to 8 bytes).
func (s *relabelReplies) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	st := s.RawFileSystem.ReadDirPlus(cancel, in, out)
	if !st.Ok() {
		return st
	}
	buf := out.Bytes()
	for len(buf) >= entryOutSize+direntHeader {
		e := (*fuse.EntryOut)(unsafe.Pointer(&buf[0]))
		nameLen := int(binary.NativeEndian.Uint32(buf[entryOutSize+16:]))
		size := entryOutSize + (direntHeader+nameLen+7)&^7
		if size > len(buf) {
			break
		}
		if e.Generation != 0 {
			s.r.entry(e)
		}
		buf = buf[size:]
	}
	return st
}

const (
	entryOutSize = int(unsafe.Sizeof(fuse.EntryOut{}))
	direntHeader = 24 // ino, off, namelen, type
)
