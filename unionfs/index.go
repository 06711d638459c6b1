package unionfs

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/whiteout"
)

// The inode index (index=on), in kernel overlay's on-disk format (see
// docs/overlay-index.md).
//
// The first copy-up of a lower hard link makes one upper file for the
// whole link group: it is linked into <workdir>/index under the hex of the
// lower file's overlay file handle, then to the copied-up name. Every name
// of the group, copied up or still only below, finds that entry (by the
// handle of its lower file, or by the origin xattr of its upper name), so
// a write through one name is read through all. The union's link count of
// the group is kept on the entry as kernel overlay keeps it: "U+N" in the
// nlink xattr, the count relative to the upper inode's. Before a change of
// names of the group (link, unlink, rename over) the count is written
// relative to the upper inode's as it stands, so the change of the upper
// inode's own count carries the union's along and a crash in between
// leaves both right.
//
// A node of the group has its data at the entry (nodeState.index), not at
// its path: the kernel asks FUSE for data by node, and a node of a link
// group is reached through several names, some of which may be only in a
// lower layer.

// Overlay file handle (struct ovl_fb) fields.
const (
	fhVersion       = 0
	fhMagic         = 0xfb
	fhFlagBigEndian = 0x01
	fhFlagUpper     = 0x04 // the handle names an upper object
	fhHeaderLen     = 21   // version, magic, length, flags, type, uuid
)

// inodeIndex is <workdir>/index.
type inodeIndex struct {
	// dir is the index dir as a layer, so a reference into it works as
	// one into the upper layer does (same filesystem).
	dir *layer
	// mu serializes making, linking and removing entries and rewriting
	// their link counts. Taken under ns and node.mu; a leaf.
	mu sync.Mutex
}

// encodeFH builds the overlay file handle of a kernel file handle: no
// uuid (kernel overlay writes the null uuid unless mounted uuid=on).
func encodeFH(typ int32, fid []byte, flags byte) []byte {
	b := make([]byte, fhHeaderLen+len(fid))
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 {
		flags |= fhFlagBigEndian
	}
	b[0], b[1], b[2], b[3], b[4] = fhVersion, fhMagic, byte(len(b)), flags, byte(typ)
	copy(b[fhHeaderLen:], fid)
	return b
}

// decodeFH checks an overlay file handle and returns its kernel handle
// type and bytes.
func decodeFH(b []byte) (typ int32, fid []byte, err error) {
	if len(b) <= fhHeaderLen || b[0] != fhVersion || b[1] != fhMagic || int(b[2]) != len(b) {
		return 0, nil, fmt.Errorf("not an overlay file handle (%d bytes)", len(b))
	}
	return int32(b[4]), b[fhHeaderLen:], nil
}

// handleOf is the overlay file handle of path under fd.
func handleOf(fd int, path string, flags byte) ([]byte, error) {
	h, _, err := unix.NameToHandleAt(fd, rel(path), 0)
	if err != nil {
		return nil, fmt.Errorf("file handle of %s: %w", rel(path), err)
	}
	if len(h.Bytes()) > 255-fhHeaderLen {
		return nil, fmt.Errorf("file handle of %s: %d bytes is too long", rel(path), len(h.Bytes()))
	}
	return encodeFH(h.Type(), h.Bytes(), flags), nil
}

func (u *FS) overlayXattr(name string) string { return u.markers.Prefix + name }

// openIndex prepares <workdir>/index and checks that it, and the upper
// dir, were used with these layers, recording them on first use, as
// kernel overlay does: the index dir keeps the handle of the upper root,
// the upper root the handle of the topmost lower root.
func (u *FS) openIndex() error {
	if u.markers.Prefix != whiteout.TrustedPrefix {
		return badOption("index=on needs trusted.* xattrs on the upper layer")
	}
	dir := filepath.Join(u.opts.Work, "index")
	if err := unix.Mkdir(dir, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create index dir %s: %w", dir, err)
	}
	l, err := openLayer(0, dir, true)
	if err != nil {
		return err
	}
	upperFH, err := handleOf(u.upper.fd, "", fhFlagUpper)
	if err == nil {
		err = recordOrCheck(l.fd, u.overlayXattr("upper"), upperFH, "index dir "+dir+" belongs to another upper dir")
	}
	if err == nil {
		var lowerFH []byte
		if lowerFH, err = handleOf(u.lowers[0].fd, "", 0); err == nil {
			err = recordOrCheck(u.upper.fd, u.overlayXattr("origin"), lowerFH, "upper dir "+u.upper.path+" was used with another lower dir")
		}
	}
	if err != nil {
		l.close()
		return fmt.Errorf("index=on: %w", err)
	}
	u.index = &inodeIndex{dir: l}
	return nil
}

// recordOrCheck sets the xattr name of the directory fd to want, or
// checks that it already holds it.
func recordOrCheck(fd int, name string, want []byte, mismatch string) error {
	got, err := sysx.Getxattr(fd, ".", name)
	if errors.Is(err, unix.ENODATA) {
		return sysx.Setxattr(fd, ".", name, want, 0)
	}
	if err != nil {
		return err
	}
	if string(got) != string(want) {
		return badOption("%s (%s differs; kernel overlay refuses it too)", mismatch, name)
	}
	return nil
}

// indexable reports whether a lower object with attributes st is a name
// of a hard link the index keeps together.
func (u *FS) indexable(l *layer, st *unix.Stat_t) bool {
	return u.index != nil && !l.upper && st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1
}

// entryOf returns the index entry of the lower object ref, "" if it has
// none.
func (u *FS) entryOf(ref layerRef) (string, unix.Stat_t, error) {
	var st unix.Stat_t
	fh, err := handleOf(ref.l.fd, ref.path, 0)
	if err != nil {
		return "", st, err
	}
	name := hex.EncodeToString(fh)
	if err := u.index.dir.lstat(name, &st); err != nil {
		if isMissingInLayer(err) {
			return "", st, nil
		}
		return "", st, err
	}
	if u.markers.IsWhiteout(u.index.dir.fd, name, &st) {
		return "", st, nil // a removed entry kept to refuse old handles
	}
	return name, st, nil
}

// findLowerInIndex completes the lookup of a lower hard link f: if its
// group has an index entry, the object is that upper file.
func (u *FS) findLowerInIndex(f *found) error {
	if !u.indexable(f.top.l, &f.stat) {
		return nil
	}
	name, st, err := u.entryOf(f.top)
	if err != nil || name == "" {
		return err
	}
	f.state.upper, f.state.index = true, name
	f.top, f.stat = layerRef{u.index.dir, name}, st
	return nil
}

// findUpperInIndex notes that the upper non-directory f is a name of an
// indexed hard link: its origin names an index entry that is the same
// inode.
func (u *FS) findUpperInIndex(f *found) {
	if u.index == nil || f.isDir() || f.stat.Nlink < 2 {
		return
	}
	fh, err := sysx.Getxattr(u.upper.fd, rel(f.top.path), u.overlayXattr("origin"))
	if err != nil {
		return
	}
	name := hex.EncodeToString(fh)
	var st unix.Stat_t
	if u.index.dir.lstat(name, &st) == nil && st.Ino == f.stat.Ino && st.Dev == f.stat.Dev {
		f.state.index = name
	}
}

// indexedIdentity is the identity of an upper non-directory with more
// than one link that carries no unionmount identity (id, from its own
// inode): if its origin names a lower file (kernel overlay indexed it),
// the lower file's number, as the kernel shows it. One getxattr for such
// objects only (a lookup or a listing entry).
func (u *FS) indexedIdentity(ref layerRef, st *unix.Stat_t, id fs.StableAttr) fs.StableAttr {
	if !ref.l.upper || st.Nlink < 2 || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return id
	}
	fh, err := sysx.Getxattr(ref.l.fd, rel(ref.path), u.overlayXattr("origin"))
	if err != nil {
		return id
	}
	return u.originIdentity(fh, id)
}

// originIdentity is the identity of an upper name another writer (kernel
// overlay) indexed: the lower file its handle names, as the kernel shows
// it, found by the handle in each lower layer; id if none holds it.
func (u *FS) originIdentity(fh []byte, id fs.StableAttr) fs.StableAttr {
	if l, st, ok := u.origin(fh); ok {
		id.Ino = u.inoFor(l, st.Ino)
	}
	return id
}

// origin finds the lower file the overlay file handle fh names, by the
// handle in each lower layer.
func (u *FS) origin(fh []byte) (*layer, unix.Stat_t, bool) {
	var st unix.Stat_t
	typ, fid, err := decodeFH(fh)
	if err != nil {
		return nil, st, false
	}
	h := unix.NewFileHandle(typ, fid)
	for _, l := range u.lowers {
		// open_by_handle_at refuses an O_PATH fd as the mount's.
		mfd, err := unix.Openat(l.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		fd, err := unix.OpenByHandleAt(mfd, h, unix.O_PATH|unix.O_CLOEXEC)
		unix.Close(mfd)
		if err != nil {
			continue
		}
		err = unix.Fstat(fd, &st)
		unix.Close(fd)
		if err == nil && st.Dev == l.dev {
			return l, st, true
		}
	}
	return nil, st, false
}

// unionNlink is the union's link count of the indexed object at path
// under fd whose real count is st.Nlink: from its nlink xattr, or the
// real count when that is missing or malformed (as the kernel falls
// back). lower is the lower file's count, 0 if unknown.
func (u *FS) unionNlink(fd int, path string, st *unix.Stat_t, lower uint64) uint64 {
	v, err := sysx.Getxattr(fd, rel(path), u.overlayXattr("nlink"))
	if err != nil {
		return st.Nlink
	}
	if len(v) > 0 && v[0] == 'L' && lower == 0 {
		// Relative to the lower file's count: only a copy-up that
		// stopped half-way leaves it (or another writer).
		if fh, err := sysx.Getxattr(fd, rel(path), u.overlayXattr("origin")); err == nil {
			if _, lst, ok := u.origin(fh); ok {
				lower = lst.Nlink
			}
		}
	}
	if n, ok := parseIndexNlink(string(v), st.Nlink, lower); ok {
		return n
	}
	return st.Nlink
}

// parseIndexNlink reads kernel overlay's nlink xattr: "U+N" (or "U-N") is
// relative to the upper inode's count, "L+N" to the lower's.
func parseIndexNlink(v string, upper, lower uint64) (uint64, bool) {
	if len(v) < 3 || (v[0] != 'U' && v[0] != 'L') || (v[1] != '+' && v[1] != '-') {
		return 0, false
	}
	add, err := strconv.ParseInt(v[1:], 10, 32)
	if err != nil {
		return 0, false
	}
	base := upper
	if v[0] == 'L' {
		if lower == 0 {
			return 0, false
		}
		base = lower
	}
	n := int64(base) + add
	if n <= 0 {
		return 0, false
	}
	return uint64(n), true
}

// setUnionNlink records the union count n of an entry whose upper inode
// has upper links.
func (u *FS) setUnionNlink(name string, n, upper uint64) error {
	v := fmt.Sprintf("U%+d", int64(n)-int64(upper))
	return sysx.Setxattr(u.index.dir.fd, name, u.overlayXattr("nlink"), []byte(v), 0)
}

// showIndexNlink replaces the real link count in st of the upper object
// ref with the union's, when ref is an indexed hard link.
func (u *FS) showIndexNlink(ref layerRef, st *unix.Stat_t) {
	if u.index == nil || !ref.l.upper || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return
	}
	// An upper name of a group has two links at least (itself and the
	// entry); the entry alone may have one (the names left are below).
	if st.Nlink < 2 && ref.l != u.index.dir {
		return
	}
	st.Nlink = u.unionNlink(ref.l.fd, ref.path, st, 0)
}

// showIndexNlinkFd is showIndexNlink for the open file fd of node n.
func (u *FS) showIndexNlinkFd(n *node, fd int, nlink *uint32, mode uint32) {
	if u.index == nil || mode&unix.S_IFMT == unix.S_IFDIR || (*nlink < 2 && n.state().index == "") {
		return
	}
	st := unix.Stat_t{Nlink: uint64(*nlink)}
	*nlink = uint32(u.unionNlink(fd, "", &st, 0))
}

// copyUpIndexed is the copy-up of a lower hard link src to path: the
// name is linked to its group's index entry, which is made first (a
// whole copy, as copyUpObject makes) if the group has none. It returns
// the entry's name, "" when src is not a hard link the index keeps.
//
// Preconditions: ns is held; the parent of path is in the upper.
func (u *FS) copyUpIndexed(src layerRef, path string, id fs.StableAttr) (string, error) {
	var st unix.Stat_t
	if err := src.l.lstat(src.path, &st); err != nil {
		return "", err
	}
	if !u.indexable(src.l, &st) {
		return "", nil
	}
	u.index.mu.Lock()
	defer u.index.mu.Unlock()
	name, ist, err := u.entryOf(src)
	if err != nil {
		return "", err
	}
	if name != "" {
		return name, u.linkEntryLocked(name, &ist, path)
	}
	fh, err := handleOf(src.l.fd, src.path, 0)
	if err != nil {
		return "", err
	}
	name = hex.EncodeToString(fh)
	if err := u.makeEntryLocked(src, &st, id, fh, name, path); err != nil {
		return "", err
	}
	return name, nil
}

// makeEntryLocked makes the index entry name for src (attributes st) and
// links it to path: the copy is made whole in the work dir, linked into
// the index, then renamed to path.
//
// Preconditions: index.mu is held.
func (u *FS) makeEntryLocked(src layerRef, st *unix.Stat_t, id fs.StableAttr, fh []byte, name, path string) (err error) {
	if err := unix.Unlinkat(u.index.dir.fd, name, 0); err != nil && !isMissingInLayer(err) {
		return fmt.Errorf("clear index whiteout %s: %w", name, err)
	}
	tmp := tempName()
	defer func() {
		if err != nil {
			unix.Unlinkat(u.work, tmp, 0)
		}
	}()
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		err = u.copyFile(src, tmp, st, true)
	} else {
		err = u.copySpecial(src, tmp, st)
	}
	if err != nil {
		return err
	}
	u.crashPoint(CrashCopyUpData)
	if err := u.copyMetadata(src, tmp, st, id); err != nil {
		return err
	}
	if err := sysx.Setxattr(u.work, tmp, u.overlayXattr("origin"), fh, 0); err != nil {
		return fmt.Errorf("record origin: %w", err)
	}
	// The union count is the lower's. "L+0" says so whatever the
	// upper inode's own count: right with the work dir's link alone,
	// with the entry's, and with the name's, so a crash at any step
	// (the remount clears the work dir) leaves it right.
	if err := sysx.Setxattr(u.work, tmp, u.overlayXattr("nlink"), []byte("L+0"), 0); err != nil {
		return fmt.Errorf("record link count: %w", err)
	}
	if err := unix.Linkat(u.work, tmp, u.index.dir.fd, name, 0); err != nil {
		return fmt.Errorf("link into the index: %w", err)
	}
	u.crashPoint(CrashCopyUpBeforeInstall)
	if err := u.installFromWork(tmp, path); err != nil {
		unix.Unlinkat(u.index.dir.fd, name, 0)
		return err
	}
	u.markImpure(path)
	u.crashPoint(CrashCopyUpAfterInstall)
	// Relative to the upper inode's count (the entry and path) from
	// now on, as the kernel writes it: reading it takes no look-up of
	// the lower file.
	return u.setUnionNlink(name, st.Nlink, 2)
}

// copySpecial makes tmp in the work dir a copy of the lower symlink or
// device src.
func (u *FS) copySpecial(src layerRef, tmp string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		buf := make([]byte, unix.PathMax)
		got, err := unix.Readlinkat(src.l.fd, rel(src.path), buf)
		if err != nil {
			return err
		}
		return unix.Symlinkat(string(buf[:got]), u.work, tmp)
	}
	return unix.Mknodat(u.work, tmp, st.Mode, int(st.Rdev))
}

// linkEntryLocked links the index entry name (attributes ist) to path:
// one more upper link, the same union count.
//
// Preconditions: index.mu is held.
func (u *FS) linkEntryLocked(name string, ist *unix.Stat_t, path string) error {
	var cur unix.Stat_t
	if u.upper.lstat(path, &cur) == nil && cur.Ino == ist.Ino && cur.Dev == ist.Dev {
		return nil // linked already
	}
	union := u.unionNlink(u.index.dir.fd, name, ist, 0)
	tmp := tempName()
	if err := unix.Linkat(u.index.dir.fd, name, u.work, tmp, 0); err != nil {
		return fmt.Errorf("link index entry %s: %w", name, err)
	}
	if err := u.installFromWork(tmp, path); err != nil {
		unix.Unlinkat(u.work, tmp, 0)
		return err
	}
	u.markImpure(path)
	return u.setUnionNlink(name, union, ist.Nlink+1)
}

// markImpure marks the upper parent of path as holding an object with an
// origin, as kernel overlay does (its listings then ask for the real
// inode numbers). Best effort: only kernel overlay's listings read it.
func (u *FS) markImpure(path string) {
	sysx.Setxattr(u.upper.fd, rel(dirOf(path)), u.overlayXattr("impure"), []byte("y"), 0)
}

// indexedName makes sure the name path, found as f, is an upper link of
// its group's index entry when f is a name of an indexed (or indexable)
// hard link, and returns the entry's name ("" for any other object).
// The kernel does the same before a name of the group goes (its
// ovl_nlink_start): the union count then follows the upper inode's.
//
// Preconditions: ns is held for writing; the parent of path is upper.
func (u *FS) indexedName(path string, f *found) (string, error) {
	if u.index == nil || f.isDir() {
		return "", nil
	}
	if f.state.index == "" {
		if f.state.upper || len(f.state.lowers) == 0 {
			return "", nil
		}
		return u.copyUpIndexed(f.state.lowers[0], path, f.id)
	}
	u.index.mu.Lock()
	defer u.index.mu.Unlock()
	var ist unix.Stat_t
	if err := u.index.dir.lstat(f.state.index, &ist); err != nil {
		return "", fmt.Errorf("index entry %s: %w", f.state.index, err)
	}
	return f.state.index, u.linkEntryLocked(f.state.index, &ist, path)
}

// pinNlink is called before an upper link of the entry name is added,
// unlinked, replaced or renamed over: it records the union count relative
// to the upper inode's, so the change carries it along. It returns the
// union count before the change.
//
// Preconditions: ns is held for writing.
func (u *FS) pinNlink(name string) (uint64, error) {
	u.index.mu.Lock()
	defer u.index.mu.Unlock()
	var ist unix.Stat_t
	if err := u.index.dir.lstat(name, &ist); err != nil {
		return 0, fmt.Errorf("index entry %s: %w", name, err)
	}
	n := u.unionNlink(u.index.dir.fd, name, &ist, 0)
	return n, u.setUnionNlink(name, n, ist.Nlink)
}

// nameGone removes the index entry name when the name that went was the
// group's last (union count before was 1), as kernel overlay does; if
// upper links remain (a lower link added behind the union's back), the
// count is set to theirs instead, as the kernel does.
//
// Preconditions: ns is held for writing.
func (u *FS) nameGone(name string, before uint64) error {
	if before > 1 {
		return nil
	}
	u.index.mu.Lock()
	defer u.index.mu.Unlock()
	var ist unix.Stat_t
	if err := u.index.dir.lstat(name, &ist); err != nil {
		return fmt.Errorf("index entry %s: %w", name, err)
	}
	if ist.Nlink > 1 {
		return u.setUnionNlink(name, ist.Nlink-1, ist.Nlink)
	}
	return unix.Unlinkat(u.index.dir.fd, name, 0)
}

// removeIndexed removes path, found as f, when it is a name of an
// indexed or indexable hard link: as kernel overlay, it is linked to the
// entry first (made if the group had none, so the names left show one
// link fewer), then unlinked or whited out. done is false for any other
// object.
//
// Preconditions: ns is held for writing; the parent of path is upper
// when needWhiteout.
func (u *FS) removeIndexed(dir *node, path string, f *found, needWhiteout bool) (done bool, err error) {
	name, err := u.indexedName(path, f)
	if err != nil || name == "" {
		return false, err
	}
	noteIndexed(dir, baseOf(path), f, name)
	before, err := u.pinNlink(name)
	if err != nil {
		return true, err
	}
	if needWhiteout {
		err = u.makeWhiteout(path)
	} else {
		err = unix.Unlinkat(u.upper.fd, path, 0)
	}
	if err != nil {
		return true, err
	}
	return true, u.nameGone(name, before)
}

// linkIndexedSide links the name of a rename's side, when it is a name
// of an indexed (or indexable) hard link, to its entry, so the upper
// rename finds it at its own name. The node is pointed at the entry, so
// its own copy-up, which would link the node's last looked-up name (a
// FUSE request names the node, not the name), finds it done.
//
// Preconditions: ns is held for writing.
func (u *FS) linkIndexedSide(s *renameSide) error {
	if u.index == nil || s.found == nil || s.found.isDir() {
		return nil
	}
	if err := u.copyUp(s.dir, true); err != nil {
		return err
	}
	name, err := u.indexedName(s.path, s.found)
	if err != nil || name == "" {
		return err
	}
	noteIndexed(s.dir, s.name, s.found, name)
	return nil
}

// indexedMove prepares the rename of src over dst for the index: the
// source's name is linked to its entry (linkIndexedSide), and a
// destination that is a name of an indexed hard link loses a link of its
// group. The returned function finishes the destination's group once the
// rename is done.
//
// Preconditions: ns is held for writing.
func (u *FS) indexedMove(src, dst *renameSide) (after func() error, err error) {
	after = func() error { return nil }
	if u.index == nil {
		return after, nil
	}
	if err := u.linkIndexedSide(src); err != nil {
		return after, err
	}
	d := dst.found
	if d == nil || d.id == src.found.id {
		return after, nil
	}
	if err := u.copyUp(dst.dir, true); err != nil {
		return after, err
	}
	name, err := u.indexedName(dst.path, d)
	if err != nil || name == "" {
		return after, err
	}
	noteIndexed(dst.dir, dst.name, d, name)
	before, err := u.pinNlink(name)
	if err != nil {
		return after, err
	}
	return func() error { return u.nameGone(name, before) }, nil
}

// linkingIndexed prepares a new link of n: for an indexed hard link, the
// union count is pinned to the upper inode's, which the link raises.
//
// Preconditions: ns is held for writing; n is copied up.
func (u *FS) linkingIndexed(n *node) error {
	if u.index == nil {
		return nil
	}
	if st := n.state(); st.index != "" {
		_, err := u.pinNlink(st.index)
		return err
	}
	return nil
}

// noteIndexed points the node the kernel knows for name in dir, if any,
// at the index entry just made for it: the node is every name's of the
// group, and the names left read the entry from now on.
func noteIndexed(dir *node, name string, f *found, entry string) {
	child := dir.GetChild(name)
	if child == nil {
		return
	}
	cn, ok := child.Operations().(*node)
	if !ok {
		return
	}
	cn.setState(nodeState{upper: true, index: entry, lowers: f.state.lowers})
}

// indexedOver reports whether the node is an indexed hard link and st,
// from a lookup that ran before the index entry was made, is not: the
// node keeps its state.
func (n *node) indexedOver(st nodeState) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st.index != "" && st.index == ""
}
