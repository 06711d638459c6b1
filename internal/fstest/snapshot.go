package fstest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"
)

// Entry is what a snapshot records of one object.
type Entry struct {
	Type  string // "file", "dir", "symlink", "whiteout", "fifo", "chr", "blk", "sock"
	Mode  uint32 // permission and set-id bits
	Size  int64  // files only
	Data  string // sha256 of a file's content, or a symlink's target
	Nlink uint64 // non-directories only
	Rdev  uint64
	Owner string // uid:gid
	// Xattrs lists the user.* attributes as name=value, sorted; the
	// union's own markers (user.overlay.*, user.unionmount.*) are left out.
	Xattrs string
}

func (e Entry) String() string {
	return fmt.Sprintf("%s %04o %s size=%d nlink=%d data=%.12s xattrs=[%s]", e.Type, e.Mode, e.Owner, e.Size, e.Nlink, e.Data, e.Xattrs)
}

// Snapshot maps each path under a tree (relative, "/"-separated) to its
// entry.
type Snapshot map[string]Entry

// TakeSnapshot records the tree at root. Character devices 0/0 are
// recorded as whiteouts.
func TakeSnapshot(root string) (Snapshot, error) {
	s := Snapshot{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := Entry{Mode: st.Mode & 0o7777, Owner: fmt.Sprintf("%d:%d", st.Uid, st.Gid)}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = "dir"
		case unix.S_IFREG:
			e.Type, e.Size, e.Nlink = "file", st.Size, uint64(st.Nlink)
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			e.Data = hex.EncodeToString(sum[:])
		case unix.S_IFLNK:
			e.Type, e.Nlink = "symlink", uint64(st.Nlink)
			e.Data, _ = os.Readlink(p)
		case unix.S_IFCHR:
			e.Type, e.Rdev = "chr", st.Rdev
			if st.Rdev == 0 {
				e.Type, e.Mode, e.Owner = "whiteout", 0, ""
			}
		case unix.S_IFBLK:
			e.Type, e.Rdev = "blk", st.Rdev
		case unix.S_IFIFO:
			e.Type, e.Nlink = "fifo", uint64(st.Nlink)
		case unix.S_IFSOCK:
			e.Type = "sock"
		}
		if e.Type != "symlink" && e.Type != "whiteout" {
			e.Xattrs = userXattrs(p)
		}
		s[filepath.ToSlash(rel)] = e
		return nil
	})
	return s, err
}

// Diff lists the differences between two snapshots, one line each, or
// nothing when they match.
func Diff(want, got Snapshot) []string {
	var out []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: missing (want %v)", p, w))
		case g != w:
			out = append(out, fmt.Sprintf("%s: got %v, want %v", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected %v", p, g))
		}
	}
	sort.Strings(out)
	return out
}

// Paths lists a snapshot's paths, sorted, for messages.
func (s Snapshot) Paths() string {
	var ps []string
	for p := range s {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return strings.Join(ps, " ")
}

func userXattrs(p string) string {
	names, err := xattr.LList(p)
	if err != nil {
		return "?" + err.Error()
	}
	var out []string
	for _, n := range names {
		if !strings.HasPrefix(n, "user.") || strings.HasPrefix(n, "user.overlay.") || strings.HasPrefix(n, "user.unionmount.") {
			continue
		}
		v, _ := xattr.LGet(p, n)
		out = append(out, n+"="+string(v))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
