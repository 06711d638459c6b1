package unionfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// layerRef names one real object: a path in a layer.
type layerRef struct {
	l    *layer
	path string
}

// nodeState says where a union object lives. It is a value: lookups build
// a fresh one and swap it in.
type nodeState struct {
	// upper is set when the object exists in the upper layer at the
	// node's union path.
	upper bool
	// lowers are the lower objects the node merges, topmost first. A
	// directory lists every lower directory merged into it (none when
	// opaque); any other object has at most one, its copy-up source.
	lowers []layerRef
	// metacopy is set when the upper object is a metadata-only copy: its
	// data is still lowers[0]'s (see metacopy.go).
	metacopy bool
	// index, when set, names the index entry of an indexed hard link
	// (see index.go): the object's data and attributes are there,
	// whichever of its names the node is reached by.
	index string
}

// dataUpper reports whether the object's data lives in the upper layer.
func (st nodeState) dataUpper() bool { return st.upper && !st.metacopy }

// node is one union inode.
type node struct {
	fs.Inode
	ufs *FS

	mu sync.Mutex
	st nodeState // guarded by mu
	// cachedOpens counts open handles not using passthrough, and
	// passthroughOpens those using it.
	cachedOpens, passthroughOpens int // guarded by mu
	// lowerBacking is set while the passthrough opens' backing file is
	// the node's lower file, and dataChanges counts the requests
	// admitted to change the node's data (see passthrough.go).
	lowerBacking bool // guarded by mu
	dataChanges  int  // guarded by mu
	// openFiles are the node's open handles, for a request that names
	// the node but no handle once its name is gone (see setattrUnlinked).
	openFiles map[*file]struct{} // guarded by mu
	// pageCacheStale is set when a passthrough writer may have changed
	// the file's data behind the kernel's page cache of it, so the next
	// daemon-served open must drop that cache (see newHandle).
	pageCacheStale bool // guarded by mu
	// anonFd is an O_PATH fd of an unnamed (O_TMPFILE) file, 0 if none.
	anonFd int // guarded by mu
	// goneAttr holds the attributes of a directory removed through the
	// union (rmdir, or renamed over), for fstat of a descriptor still
	// open on it: the kernel asks without saying which open (it does not
	// tell the union of directory opens at all, see implicitDirs), and
	// the name is gone.
	goneAttr *fuse.Attr // guarded by mu

	// copiedUp is set (after st.upper) when a copy-up moved the node's
	// data to the upper layer, so that handles opened on the lower switch
	// over.
	copiedUp atomic.Bool
}

var (
	_ fs.NodeGetattrer  = (*node)(nil)
	_ fs.NodeStatfser   = (*node)(nil)
	_ fs.NodeReadlinker = (*node)(nil)
)

// state returns a copy of the node's layer state.
func (n *node) state() nodeState {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st
}

func (n *node) setState(st nodeState) {
	n.mu.Lock()
	n.st = st
	n.mu.Unlock()
	if st.dataUpper() {
		n.copiedUp.Store(true)
	}
}

// path is the node's union-relative path; "" for the root. A node whose
// name is gone (unlinked, renamed over, or under a directory that is)
// gets FS.orphanedPath, which names nothing in any layer. go-fuse's own
// Path would log a line for each such call, one per unlinked file an
// untar or a build removes.
func (n *node) path() string {
	root := n.Root()
	// Built once per request or more: the names go on the stack for
	// trees up to 16 deep, and the path is the one allocation.
	var stack [16]string
	names := stack[:0]
	size := 0
	for p := &n.Inode; p != root; {
		name, parent := p.Parent()
		if parent == nil {
			return n.ufs.orphanedPath
		}
		names = append(names, name)
		size += len(name) + 1
		p = parent
	}
	if len(names) == 1 {
		return names[0]
	}
	var b strings.Builder
	b.Grow(size)
	for i := len(names) - 1; i >= 0; i-- {
		b.WriteString(names[i])
		if i > 0 {
			b.WriteByte('/')
		}
	}
	return b.String()
}

// parentNode returns the node's parent, or nil for the root.
func (n *node) parentNode() *node {
	_, p := n.Parent()
	if p == nil {
		return nil
	}
	pn, _ := p.Operations().(*node)
	return pn
}

// top returns the layer object the node's attributes come from.
func (u *FS) top(st nodeState, path string) (layerRef, bool) {
	if st.index != "" && u.index != nil {
		return layerRef{u.index.dir, st.index}, true
	}
	if st.upper {
		return layerRef{u.upper, path}, true
	}
	if len(st.lowers) > 0 {
		return st.lowers[0], true
	}
	return layerRef{}, false
}

// identity returns the inode identity of a found object: from the
// recorded id of a copied-up object, or from the real inode.
func (u *FS) identity(ref layerRef, st *unix.Stat_t) fs.StableAttr {
	v, err := sysx.Getxattr(ref.l.fd, rel(ref.path), u.idXattr)
	return u.identityFrom(ref, st, v, err)
}

// identityAt is identity for the entry name of the open directory dirfd
// (which holds ref), as a listing finds it: one system call fewer.
func (u *FS) identityAt(dirfd int, name string, ref layerRef, st *unix.Stat_t) fs.StableAttr {
	v, err := sysx.GetxattrAt(dirfd, name, u.idXattr)
	return u.identityFrom(ref, st, v, err)
}

// identityFrom derives the identity from the recorded id xattr (v, err)
// or from the real inode.
func (u *FS) identityFrom(ref layerRef, st *unix.Stat_t, v []byte, err error) fs.StableAttr {
	id := fs.StableAttr{Mode: uint32(st.Mode) & unix.S_IFMT}
	if err == nil {
		if ino, gen, ok := parseID(string(v)); ok {
			id.Ino, id.Gen = ino, gen
			if u.brokenApart(ref, st) {
				// Names of a lower hard link that an earlier union
				// copied up carry one recorded identity; here
				// they are still names that copy-up breaks
				// apart, each a node of its own.
				id.Gen = pathGen(ref.path)
			}
			if gen != 0 && ref.l.upper && !u.branched {
				// A copied-up name of a lower hard link: a file of
				// its own, shown with the upper file's number. (In
				// a branched union every object's generation is its
				// path's, and a copy keeps its number.)
				u.relabels.set(id, u.inoFor(ref.l, st.Ino))
			}
			return id
		}
	}
	id.Ino = u.inoFor(ref.l, st.Ino)
	if u.brokenApart(ref, st) || u.branched {
		// In a branched union the branches may change underneath
		// (aufs's udba=reval): an object that moved there is a new
		// node, not the old one with a stale layer path.
		id.Gen = pathGen(ref.path)
	}
	if u.index != nil {
		id = u.indexedIdentity(ref, st, id)
	}
	return id
}

// brokenApart reports whether ref, with attributes st, is a name of a
// lower hard link that copy-up breaks away from the others. With the
// index, every name of a lower hard link stays one file: one node.
func (u *FS) brokenApart(ref layerRef, st *unix.Stat_t) bool {
	return !ref.l.upper && st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 && u.index == nil
}

func formatID(id fs.StableAttr) string {
	return fmt.Sprintf("%d:%d", id.Ino, id.Gen)
}

func parseID(s string) (ino, gen uint64, ok bool) {
	a, b, found := strings.Cut(s, ":")
	if !found {
		return 0, 0, false
	}
	ino, err1 := strconv.ParseUint(a, 10, 64)
	gen, err2 := strconv.ParseUint(b, 10, 64)
	return ino, gen, err1 == nil && err2 == nil && ino > 1
}

// newChild registers a looked-up or created object with go-fuse and
// returns its inode. When go-fuse already knows the identity (a hard
// link, or a repeated lookup), that inode's state is refreshed instead.
func (n *node) newChild(ctx context.Context, st nodeState, id fs.StableAttr) *fs.Inode {
	child := &node{ufs: n.ufs, st: st}
	if st.dataUpper() {
		child.copiedUp.Store(true)
	}
	ino := n.NewInode(ctx, child, id)
	if existing, ok := ino.Operations().(*node); ok && existing != child && !existing.indexedOver(st) {
		existing.setState(st)
	}
	return ino
}

// Getattr reports the attributes of the object's topmost real copy.
func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if f, ok := fh.(*file); ok {
		return f.Getattr(ctx, out)
	}
	n.ufs.ns.RLock()
	defer n.ufs.ns.RUnlock()
	return n.getattr(out)
}

// getattr is Getattr for callers that hold ns.
func (n *node) getattr(out *fuse.AttrOut) syscall.Errno {
	st := n.state()
	ref, ok := n.ufs.top(st, n.path())
	var s unix.Stat_t
	var err error = unix.ENOENT
	if ok {
		err = ref.l.lstat(ref.path, &s)
	}
	if err != nil {
		n.mu.Lock()
		gone := n.goneAttr
		n.mu.Unlock()
		if gone != nil && isMissingInLayer(err) {
			out.Attr = *gone
			return 0
		}
		return sysx.Errno(err)
	}
	if st.metacopy {
		n.ufs.showLowerBlocks(st, &s)
	}
	n.ufs.showIndexNlink(ref, &s)
	n.ufs.applyOverride(ref, &s)
	n.ufs.fillAttr(&out.Attr, &s)
	return 0
}

// Statfs reports the upper layer's filesystem (the top lower's for a
// read-only union).
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	l := n.ufs.upper
	if l == nil {
		// The lowers change under ns (live branch changes).
		n.ufs.ns.RLock()
		defer n.ufs.ns.RUnlock()
		l = n.ufs.lowers[0]
	}
	var s unix.Statfs_t
	if err := unix.Fstatfs(l.fd, &s); err != nil {
		return sysx.Errno(err)
	}
	out.Blocks, out.Bfree, out.Bavail = s.Blocks, s.Bfree, s.Bavail
	out.Files, out.Ffree = s.Files, s.Ffree
	out.Bsize, out.Frsize = uint32(s.Bsize), uint32(s.Frsize)
	out.NameLen = uint32(s.Namelen)
	return 0
}

// Readlink reads the symlink's topmost copy.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	n.ufs.ns.RLock()
	defer n.ufs.ns.RUnlock()
	ref, ok := n.ufs.top(n.state(), n.path())
	if !ok {
		return nil, syscall.ENOENT
	}
	buf := make([]byte, unix.PathMax)
	got, err := unix.Readlinkat(ref.l.fd, rel(ref.path), buf)
	if err != nil {
		return nil, sysx.Errno(err)
	}
	return buf[:got], 0
}

// fillAttr gives the kernel an object's attributes, as the options
// present them (squashed owners, static directory link counts).
func (u *FS) fillAttr(a *fuse.Attr, st *unix.Stat_t) {
	a.FromStat(toSyscallStat(st))
	u.adjustAttr(a)
}

// adjustAttr applies the presentation options to attributes.
func (u *FS) adjustAttr(a *fuse.Attr) {
	a.Uid = u.opts.UIDMap.Shown(a.Uid)
	a.Gid = u.opts.GIDMap.Shown(a.Gid)
	if u.opts.SquashUID >= 0 {
		a.Uid = uint32(u.opts.SquashUID)
	}
	if u.opts.SquashGID >= 0 {
		a.Gid = uint32(u.opts.SquashGID)
	}
	if u.opts.StaticNlink && a.Mode&unix.S_IFMT == unix.S_IFDIR {
		a.Nlink = 1
	}
}

// toSyscallStat converts x/sys's Stat_t to the syscall one go-fuse takes;
// the two have the same layout on Linux.
func toSyscallStat(s *unix.Stat_t) *syscall.Stat_t {
	return &syscall.Stat_t{
		Dev: s.Dev, Ino: s.Ino, Nlink: s.Nlink, Mode: s.Mode, Uid: s.Uid, Gid: s.Gid,
		Rdev: s.Rdev, Size: s.Size, Blksize: s.Blksize, Blocks: s.Blocks,
		Atim: syscall.Timespec(s.Atim), Mtim: syscall.Timespec(s.Mtim), Ctim: syscall.Timespec(s.Ctim),
	}
}

// tempName returns a fresh name for an object prepared in the work dir.
func tempName() string {
	var b [8]byte
	rand.Read(b[:])
	return "#" + hex.EncodeToString(b[:])
}

// errno converts an internal error to the FUSE answer, logging the ones
// that carry no errno of their own (internal faults).
func (u *FS) errno(err error) syscall.Errno {
	e := sysx.Errno(err)
	if e == syscall.EIO {
		u.logger.Printf("internal error: %v", err)
	}
	return e
}

// noteGoneDir keeps the attributes of the directory name (found as f)
// that was just removed from n, on its node if the kernel knows it.
func (n *node) noteGoneDir(name string, f *found) {
	if !f.isDir() {
		return
	}
	inode := n.GetChild(name)
	if inode == nil {
		return
	}
	child, ok := inode.Operations().(*node)
	if !ok {
		return
	}
	var a fuse.Attr
	n.ufs.showAttr(f, &a)
	a.Nlink = 0
	child.mu.Lock()
	child.goneAttr = &a
	child.mu.Unlock()
}
