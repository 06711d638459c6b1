package unionfs

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/whiteout"
)

var _ fs.NodeOpendirHandler = (*node)(nil)

// mergedEntry is one name of a merged directory listing.
type mergedEntry struct {
	name string
	mode uint32
	ino  uint64
}

// readMerged lists the directory at path with state st: each name once,
// from the topmost layer that has it, whiteouts and the names they hide
// left out. withIno asks for each entry's union inode number. The caller
// holds ns.
func (u *FS) readMerged(path string, st nodeState, withIno bool) ([]mergedEntry, error) {
	var layers []layerRef
	if st.upper {
		layers = append(layers, layerRef{u.upper, path})
	}
	layers = append(layers, st.lowers...)
	seen := map[string]bool{}
	var out []mergedEntry
	for _, ref := range layers {
		dirfd, names, err := listDir(ref.l.fd, ref.path)
		if err != nil {
			return nil, fmt.Errorf("list %s in layer %s: %w", rel(ref.path), ref.l.path, err)
		}
		if dirfd < 0 {
			continue // gone meanwhile
		}
		out, err = u.mergeLayer(out, seen, dirfd, ref, names, withIno)
		unix.Close(dirfd)
		if err != nil {
			return nil, err
		}
		// aufs whiteouts hide names in the layers below this one only.
		for _, e := range names {
			if hidden, ok := whiteout.HiddenByAufs(e.name); ok {
				seen[hidden] = true
			}
		}
	}
	return out, nil
}

// mergeLayer adds to out the names of one layer's directory (open as
// dirfd) that no layer above showed or hid. Children are looked at
// through dirfd, one system call each.
func (u *FS) mergeLayer(out []mergedEntry, seen map[string]bool, dirfd int, ref layerRef, names []mergedEntry, withIno bool) ([]mergedEntry, error) {
	holdsXattr := false
	checkedXattr := false
	for _, e := range names {
		if seen[e.name] || whiteout.IsAufsName(e.name) {
			continue
		}
		seen[e.name] = true
		needStat := withIno || e.mode == unix.S_IFCHR || e.mode == unix.S_IFREG || e.mode == 0
		if !needStat {
			out = append(out, e)
			continue
		}
		var cst unix.Stat_t
		if err := unix.Fstatat(dirfd, e.name, &cst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if isMissingInLayer(err) {
				continue // removed while we listed
			}
			return nil, err
		}
		if cst.Mode&unix.S_IFMT == unix.S_IFREG && cst.Size == 0 && !checkedXattr {
			holdsXattr, checkedXattr = u.markers.HoldsXattrWhiteouts(dirfd), true
		}
		if u.markers.IsWhiteoutAt(dirfd, e.name, &cst, holdsXattr) {
			continue
		}
		e.mode = cst.Mode & unix.S_IFMT
		if withIno {
			e.ino = u.relabels.ino(u.identityAt(dirfd, e.name, layerRef{ref.l, join(ref.path, e.name)}, &cst))
		}
		out = append(out, e)
	}
	return out, nil
}

// listDir opens the real directory path under dirfd and reads its names,
// with their types from getdents (0 where the filesystem does not say).
// The caller closes the returned fd; a directory that has gone gives -1
// and no names.
func listDir(dirfd int, path string) (int, []mergedEntry, error) {
	fd, err := sysx.OpenInRoot(dirfd, rel(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if isMissingInLayer(err) {
			return -1, nil, nil
		}
		return -1, nil, err
	}
	names, err := readNames(fd)
	if err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	return fd, names, nil
}

// readNames reads the entries of the directory open as fd, from its
// current position, with getdents64 straight into one buffer.
func readNames(fd int) ([]mergedEntry, error) {
	var out []mergedEntry
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		out = appendDirents(out, buf[:n])
	}
}

// appendDirents appends the entries of a getdents64 buffer to out,
// leaving out "." and "..". A record is d_ino (8 bytes), d_off (8),
// d_reclen (2), d_type (1), then the name, NUL-terminated.
func appendDirents(out []mergedEntry, buf []byte) []mergedEntry {
	for len(buf) >= direntNameOffset {
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < direntNameOffset || reclen > len(buf) {
			break // malformed: never from the kernel
		}
		typ := buf[18]
		name := buf[direntNameOffset:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		buf = buf[reclen:]
		if string(name) == "." || string(name) == ".." {
			continue
		}
		out = append(out, mergedEntry{name: string(name), mode: direntMode(typ)})
	}
	return out
}

const direntNameOffset = 19

// direntMode turns a d_type into the S_IFMT bits (0 for DT_UNKNOWN).
func direntMode(typ byte) uint32 {
	switch typ {
	case unix.DT_DIR:
		return unix.S_IFDIR
	case unix.DT_REG:
		return unix.S_IFREG
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	default:
		return 0
	}
}

// dirHandle is a merged directory being read. An entry's offset is a
// cookie made from a hash of its name, as ext4 hands out for hashed
// directories, and every listing is served in cookie order. A reader
// going on from an offset gets the names after it in whatever listing
// the handle holds, taken for it or for another reader since; so a name
// present throughout a read is listed exactly once, however the
// directory changed meanwhile and whoever started it over (a program
// that lists a directory in chunks and unlinks what it saw must not skip
// names because someone ran ls), and nothing needs keeping between
// reads: the handle can be let go once read (see implicitDirs).
type dirHandle struct {
	n *node

	mu      sync.Mutex
	entries []fuse.DirEntry // guarded by mu: the latest listing, in cookie order; nil before the first read
	pos     int             // guarded by mu: index in entries of the next entry to return
}

// Cookies of "." and ".."; a name's cookie is above both.
const (
	dotCookie    = 1
	dotdotCookie = 2
	firstCookie  = 3
)

// nameCookie is the offset of the entry after name. Two names of one
// directory share a cookie with a chance of about n²/2⁶⁴; a reader that
// stopped between them would miss the second.
func nameCookie(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	// Offsets are signed 64-bit values to the programs that see them.
	return max(h.Sum64()>>1, firstCookie)
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
	_ fs.FileFsyncdirer   = (*dirHandle)(nil)
)

// OpendirHandle opens the merged directory.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	// The listing is taken at the first read, not here: the kernel may
	// keep it from an earlier open (every change to the directory goes
	// through the mount, which makes the kernel drop it) and then never
	// asks.
	return &dirHandle{n: n}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// load takes a new listing. The caller holds d.mu.
func (d *dirHandle) load() syscall.Errno {
	u := d.n.ufs
	u.ns.RLock()
	merged, err := u.readMerged(d.n.path(), d.n.state(), true)
	u.ns.RUnlock()
	if err != nil {
		return u.errno(err)
	}
	entries := make([]fuse.DirEntry, 0, len(merged)+2)
	self := d.n.StableAttr().Ino
	parent := self
	if p := d.n.parentNode(); p != nil {
		parent = p.StableAttr().Ino
	}
	entries = append(entries,
		fuse.DirEntry{Name: ".", Mode: unix.S_IFDIR, Ino: self, Off: dotCookie},
		fuse.DirEntry{Name: "..", Mode: unix.S_IFDIR, Ino: parent, Off: dotdotCookie})
	for _, e := range merged {
		entries = append(entries, fuse.DirEntry{Name: e.name, Mode: e.mode, Ino: e.ino, Off: nameCookie(e.name)})
	}
	slices.SortFunc(entries, func(a, b fuse.DirEntry) int {
		if c := cmp.Compare(a.Off, b.Off); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	d.entries = entries
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.entries == nil {
		if errno := d.load(); errno != 0 {
			return nil, errno
		}
	}
	if d.pos >= len(d.entries) {
		return nil, 0
	}
	e := d.entries[d.pos]
	d.pos++
	return &e, 0
}

// Seekdir moves to the entry after the one whose offset is off; offset 0
// (rewinddir, or a new reader) takes a fresh listing.
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off == 0 || d.entries == nil {
		if errno := d.load(); errno != 0 {
			return errno
		}
	}
	d.pos, _ = slices.BinarySearchFunc(d.entries, off+1, func(e fuse.DirEntry, target uint64) int {
		return cmp.Compare(e.Off, target)
	})
	return 0
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	u := d.n.ufs
	if u.upper == nil {
		return 0 // a branched union's writes are synced as each branch's filesystem does
	}
	u.ns.RLock()
	defer u.ns.RUnlock()
	if !d.n.state().upper {
		return 0
	}
	fd, err := u.upper.open(d.n.path(), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return u.errno(err)
	}
	defer unix.Close(fd)
	return sysx.Errno(unix.Fsync(fd))
}

// listNames reads the names of the open directory fd.
func listNames(fd int) ([]mergedEntry, error) {
	dfd, ents, err := listDir(fd, "")
	if dfd >= 0 {
		unix.Close(dfd)
	}
	return ents, err
}
