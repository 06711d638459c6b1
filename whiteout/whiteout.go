// Package whiteout owns the on-disk markers a union layer uses to hide
// what lies below it: whiteouts (a character device 0/0, or a zero-size
// file carrying the overlay "whiteout" xattr), opaque directories (the
// overlay "opaque" xattr), directory redirects, and the overlay-private
// xattrs that must never show through a merged view.
//
// It reads and writes markers through a directory fd and a path under it;
// it knows nothing of FUSE or of how layers are stacked.
package whiteout

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// The two namespaces overlay markers live in: trusted.* needs
// CAP_SYS_ADMIN in the initial user namespace, user.* is what an
// unprivileged mounter (or kernel overlay's userxattr option) uses.
const (
	TrustedPrefix = "trusted.overlay."
	UserPrefix    = "user.overlay."
)

// Marker xattr suffixes, as kernel overlayfs names them.
const (
	opaqueSuffix    = "opaque"
	redirectSuffix  = "redirect"
	whiteoutSuffix  = "whiteout"
	whiteoutsSuffix = "whiteouts"
	metacopySuffix  = "metacopy"
)

// Markers reads and writes markers in one xattr namespace, and reads the
// other one too so layers written either way are understood.
type Markers struct {
	// Prefix is the namespace new markers are written in.
	Prefix string
}

// readPrefixes lists the namespaces honoured when reading, the writing
// one first.
func (m Markers) readPrefixes() []string {
	if m.Prefix == UserPrefix {
		return []string{UserPrefix, TrustedPrefix}
	}
	return []string{TrustedPrefix, UserPrefix}
}

// IsChardevWhiteout reports whether st describes the classic whiteout: a
// character device with device number 0/0.
func IsChardevWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// IsWhiteout reports whether the object at path (already lstat'ed into
// st) is a whiteout in any format this package reads.
func (m Markers) IsWhiteout(root int, path string, st *unix.Stat_t) bool {
	if IsChardevWhiteout(st) {
		return true
	}
	// Kernel 6.7+ xattr whiteouts: an empty regular file whose
	// overlay.whiteout xattr is set. Only empty files can be one, which
	// keeps the xattr read off the common path.
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		return false
	}
	for _, p := range m.readPrefixes() {
		if _, err := sysx.Getxattr(root, path, p+whiteoutSuffix); err == nil {
			return true
		}
	}
	return false
}

// IsOpaque reports whether the directory at path hides the directories
// below it: the overlay opaque xattr set to "y" ("x" marks a directory
// that only holds xattr whiteouts, which is not opaque), or the aufs
// marker file.
func (m Markers) IsOpaque(root int, path string) bool {
	for _, p := range m.readPrefixes() {
		v, err := sysx.Getxattr(root, path, p+opaqueSuffix)
		if err == nil && string(v) == "y" {
			return true
		}
	}
	return hasAufsOpaque(root, path)
}

// Redirect returns the redirect of the directory at path, if it has one:
// an absolute path ("/a/b", from the layer root) or a single name
// relative to the directory's parent.
func (m Markers) Redirect(root int, path string) (string, bool) {
	for _, p := range m.readPrefixes() {
		v, err := sysx.Getxattr(root, path, p+redirectSuffix)
		if err == nil && len(v) > 0 {
			return string(v), true
		}
	}
	return "", false
}

// SetOpaque marks the directory at path opaque.
func (m Markers) SetOpaque(root int, path string) error {
	if err := sysx.Setxattr(root, path, m.Prefix+opaqueSuffix, []byte("y"), 0); err != nil {
		return fmt.Errorf("mark %s opaque: %w", path, err)
	}
	return nil
}

// ClearOpaque removes the opaque marker of path in every namespace.
func (m Markers) ClearOpaque(root int, path string) error {
	for _, p := range m.readPrefixes() {
		err := sysx.Removexattr(root, path, p+opaqueSuffix)
		if err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("clear opaque on %s: %w", path, err)
		}
	}
	return nil
}

// SetRedirect records that the directory at path merges the lower
// directories found at target.
func (m Markers) SetRedirect(root int, path, target string) error {
	if err := sysx.Setxattr(root, path, m.Prefix+redirectSuffix, []byte(target), 0); err != nil {
		return fmt.Errorf("set redirect on %s: %w", path, err)
	}
	return nil
}

// IsMetacopy reports whether the regular file at path holds metadata
// only, its data being the same path's in a lower layer.
func (m Markers) IsMetacopy(root int, path string) bool {
	prefixes := m.readPrefixes()
	return sysx.HasAnyXattr(root, path, prefixes[0]+metacopySuffix, prefixes[1]+metacopySuffix)
}

// SetMetacopy marks the regular file at path as holding metadata only.
// The marker is empty, which kernel overlay reads as "no data digest".
func (m Markers) SetMetacopy(root int, path string) error {
	if err := sysx.Setxattr(root, path, m.Prefix+metacopySuffix, nil, 0); err != nil {
		return fmt.Errorf("mark %s metacopy: %w", path, err)
	}
	return nil
}

// MakeWhiteout creates a whiteout named path under root in the chardev
// format. It fails with EPERM where device nodes cannot be made (a user
// namespace), which callers may answer with another format.
func MakeWhiteout(root int, path string) error {
	if err := unix.Mknodat(root, path, unix.S_IFCHR|0o000, 0); err != nil {
		return fmt.Errorf("make whiteout %s: %w", path, err)
	}
	return nil
}

// IsPrivateXattr reports whether name belongs to the union's own
// bookkeeping, which a merged view never shows nor lets a user change.
func IsPrivateXattr(name string) bool {
	return strings.HasPrefix(name, TrustedPrefix) || strings.HasPrefix(name, "trusted.unionmount.")
}

// IsPrivateXattrIn is IsPrivateXattr for a mount that keeps its markers
// in prefix: with user.overlay. markers those are private too.
func (m Markers) IsPrivateXattrIn(name string) bool {
	return IsPrivateXattr(name) || (m.Prefix == UserPrefix && strings.HasPrefix(name, UserPrefix)) ||
		strings.HasPrefix(name, "user.unionmount.")
}

// HoldsXattrWhiteouts reports whether the open directory dirfd may hold
// xattr whiteouts: like kernel overlay, only a directory with an opaque
// xattr ("x", or "y") does, so a listing need not ask each empty file.
func (m Markers) HoldsXattrWhiteouts(dirfd int) bool {
	for _, p := range m.readPrefixes() {
		if _, err := sysx.Getxattr(dirfd, "", p+opaqueSuffix); err == nil {
			return true
		}
	}
	return false
}

// IsWhiteoutAt is IsWhiteout for the entry name of the open directory
// dirfd (already lstat'ed into st) in a listing; holdsXattr is the
// directory's HoldsXattrWhiteouts.
func (m Markers) IsWhiteoutAt(dirfd int, name string, st *unix.Stat_t, holdsXattr bool) bool {
	if IsChardevWhiteout(st) {
		return true
	}
	if !holdsXattr || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		return false
	}
	for _, p := range m.readPrefixes() {
		if _, err := sysx.GetxattrAt(dirfd, name, p+whiteoutSuffix); err == nil {
			return true
		}
	}
	return false
}
