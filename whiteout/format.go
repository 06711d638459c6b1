package whiteout

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// Format is how new whiteouts and opaque markers are written. All three
// are read in every mode.
type Format int

const (
	// Chardev: a character device 0/0; opaque directories carry the
	// overlay opaque xattr. Kernel overlay's format; making a device
	// node needs CAP_MKNOD in the initial user namespace.
	Chardev Format = iota
	// Xattr: an empty regular file with the overlay whiteout xattr
	// (kernel 6.7+), in a directory marked opaque "x"; works in a user
	// namespace.
	Xattr
	// Aufs: an empty file ".wh.NAME" beside where NAME was; opaque
	// directories hold ".wh..wh..opq". Docker's aufs layers and OCI
	// layer tarballs use it.
	Aufs
)

func (f Format) String() string {
	return [...]string{"chardev", "xattr", "aufs"}[f]
}

// ParseFormat reads a whiteout= value; auto is chardev with a fallback
// to xattr where device nodes cannot be made.
func ParseFormat(s string) (f Format, auto bool, err error) {
	switch s {
	case "", "auto":
		return Chardev, true, nil
	case "chardev":
		return Chardev, false, nil
	case "xattr":
		return Xattr, false, nil
	case "aufs":
		return Aufs, false, nil
	}
	return 0, false, fmt.Errorf("whiteout=%q: want auto, chardev, xattr or aufs", s)
}

// The aufs names.
const (
	AufsPrefix = ".wh."
	AufsOpaque = ".wh..wh..opq"
)

// IsAufsName reports whether name is reserved for aufs markers: never
// shown in a merged view, never created through it.
func IsAufsName(name string) bool { return strings.HasPrefix(name, AufsPrefix) }

// AufsWhiteoutOf returns the whiteout name that hides name.
func AufsWhiteoutOf(name string) string { return AufsPrefix + name }

// HiddenByAufs returns the name an aufs whiteout hides, if name is one
// (and not the opaque marker or another aufs-internal name).
func HiddenByAufs(name string) (string, bool) {
	if !IsAufsName(name) || name == AufsOpaque || strings.HasPrefix(name, AufsPrefix+AufsPrefix) {
		return "", false
	}
	return strings.TrimPrefix(name, AufsPrefix), true
}

func join(dir, name string) string {
	if dir == "" || dir == "." {
		return name
	}
	return dir + "/" + name
}

// HasAufsWhiteout reports whether dir (under root) holds an aufs
// whiteout for name.
func HasAufsWhiteout(root int, dir, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(root, join(dir, AufsWhiteoutOf(name)), &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// hasAufsOpaque reports whether the directory holds the aufs opaque
// marker.
func hasAufsOpaque(root int, dir string) bool {
	var st unix.Stat_t
	return unix.Fstatat(root, join(dir, AufsOpaque), &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// PrepareWhiteout creates, as tmp in the work dir, the object that hides
// a name in format f: a device node, or an empty file with the whiteout
// xattr, or (for aufs) the empty ".wh.NAME" file. The caller renames it
// into place: over the name itself, or for aufs beside it under
// AufsWhiteoutOf(name).
func (m Markers) PrepareWhiteout(work int, tmp string, f Format) error {
	switch f {
	case Chardev:
		return MakeWhiteout(work, tmp)
	case Xattr:
		fd, err := unix.Openat(work, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o000)
		if err != nil {
			return fmt.Errorf("make whiteout %s: %w", tmp, err)
		}
		unix.Close(fd)
		if err := sysx.Setxattr(work, tmp, m.Prefix+whiteoutSuffix, nil, 0); err != nil {
			unix.Unlinkat(work, tmp, 0)
			return fmt.Errorf("mark whiteout %s: %w", tmp, err)
		}
		return nil
	case Aufs:
		fd, err := unix.Openat(work, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o444)
		if err != nil {
			return fmt.Errorf("make whiteout %s: %w", tmp, err)
		}
		return unix.Close(fd)
	}
	return fmt.Errorf("unknown whiteout format %d", f)
}

// MarkHoldsXattrWhiteouts marks a directory as holding xattr whiteouts
// (opaque "x"), as kernel overlay requires to see them, unless it is
// opaque already.
func (m Markers) MarkHoldsXattrWhiteouts(root int, dir string) error {
	if m.IsOpaque(root, dir) {
		return nil
	}
	if _, err := sysx.Getxattr(root, dir, m.Prefix+opaqueSuffix); err == nil {
		return nil
	}
	return sysx.Setxattr(root, dir, m.Prefix+opaqueSuffix, []byte("x"), 0)
}

// SetOpaqueFormat marks a directory opaque in format f.
func (m Markers) SetOpaqueFormat(root int, dir string, f Format) error {
	if f != Aufs {
		return m.SetOpaque(root, dir)
	}
	fd, err := unix.Openat(root, join(dir, AufsOpaque), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return fmt.Errorf("mark %s opaque: %w", dir, err)
	}
	return unix.Close(fd)
}

// IsPermissionError reports errors that mean "this format cannot be
// written here" (a user namespace refusing a device node).
func IsPermissionError(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}
