package unionfs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// layer is one branch of the union. It owns a directory fd on the
// branch's root and does every call relative to it.
type layer struct {
	// index is the layer's place in the stack: 0 is the upper (when
	// there is one), then the lowers from the top down.
	index int
	path  string
	fd    int
	dev   uint64
	// inoBits tags inode numbers from this layer's filesystem so two
	// filesystems' numbers cannot collide; zero for the upper's.
	inoBits uint64
	upper   bool
	// writable is set on the upper and on a branched union's writable
	// branches, where work is the fd of the branch's scratch dir
	// (-1 otherwise; see branches.go).
	writable bool
	work     int
	// backsPassthrough is set when the kernel can read the layer's files
	// for a passthrough open (see passthrough.go).
	backsPassthrough bool
}

func openLayer(index int, path string, upper bool) (*layer, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat layer %s: %w", path, err)
	}
	return &layer{index: index, path: path, fd: fd, dev: st.Dev, upper: upper, writable: upper, work: -1,
		backsPassthrough: canBackPassthrough(fd)}, nil
}

// canBackPassthrough reports whether files of the filesystem holding the
// directory fd can be a FUSE mount's backing files. The kernel refuses a
// backing file on a stacked filesystem (overlay, ecryptfs, a FUSE mount
// that uses passthrough itself) deeper than the mount's stacking depth,
// and go-fuse takes a refused registration as the end of passthrough for
// the whole mount: a lower on such a filesystem is served by the daemon.
func canBackPassthrough(fd int) bool {
	var sfs unix.Statfs_t
	if unix.Fstatfs(fd, &sfs) != nil {
		return false
	}
	switch uint32(sfs.Type) {
	case unix.OVERLAYFS_SUPER_MAGIC, unix.ECRYPTFS_SUPER_MAGIC, unix.FUSE_SUPER_MAGIC:
		return false
	}
	return true
}

func (l *layer) close() {
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
	if l.work >= 0 {
		unix.Close(l.work)
		l.work = -1
	}
}

// rel turns a union-relative path ("" for the root) into one the *at
// calls accept.
func rel(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// lstat stats path in the layer without following a final symlink.
func (l *layer) lstat(path string, st *unix.Stat_t) error {
	return unix.Fstatat(l.fd, rel(path), st, unix.AT_SYMLINK_NOFOLLOW)
}

// open opens path in the layer, confined to it.
func (l *layer) open(path string, flags int, mode uint32) (int, error) {
	return sysx.OpenInRoot(l.fd, rel(path), flags, mode)
}

// isMissingInLayer reports a system call's errors that mean "nothing by
// that name in this layer" (ENOENT, or ENOTDIR for a path through a
// non-directory), unlike errNoSuchName, the union lookup's own answer.
func isMissingInLayer(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)
}

// join joins a union-relative directory and a name.
func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// dirOf returns the directory part of a union-relative path.
func dirOf(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return ""
}

// baseOf returns the last component of a union-relative path.
func baseOf(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}
