package whiteout

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// ConvertStats counts what Convert rewrote.
type ConvertStats struct {
	Whiteouts, Opaques, Dropped int
}

// aufsInternal are the aufs bookkeeping names (pseudo-links, orphans,
// the branch's own dir) that mean nothing to overlay.
var aufsInternal = map[string]bool{".wh..wh.plnk": true, ".wh..wh.orph": true, ".wh..wh.aufs": true}

// Convert rewrites every whiteout and opaque marker of the layer tree
// under root (a directory fd) into format to, with overlay markers in
// m's namespace. Each marker is replaced atomically or the new one is
// made before the old one goes, so an interrupted run leaves a layer
// that still hides what it hid.
func (m Markers) Convert(root int, to Format) (ConvertStats, error) {
	var st ConvertStats
	err := m.convertDir(root, "", to, &st)
	return st, err
}

func (m Markers) convertDir(root int, dir string, to Format, st *ConvertStats) error {
	names, err := sysx.ReadNames(root, dir)
	if err != nil {
		return err
	}
	holdsXattrWhiteouts := false
	for _, name := range names {
		path := join(dir, name)
		if to != Aufs && aufsInternal[name] {
			if err := sysx.RemoveAllAt(root, path); err != nil {
				return err
			}
			st.Dropped++
			continue
		}
		if name == AufsOpaque {
			if to == Aufs {
				continue
			}
			if err := m.SetOpaque(root, dirOrDot(dir)); err != nil {
				return err
			}
			if err := unix.Unlinkat(root, path, 0); err != nil {
				return fmt.Errorf("remove %s: %w", path, err)
			}
			st.Opaques++
			continue
		}
		if hidden, ok := HiddenByAufs(name); ok {
			if to == Aufs {
				continue
			}
			if err := m.aufsToOverlay(root, dir, hidden, to); err != nil {
				return err
			}
			if to == Xattr {
				holdsXattrWhiteouts = true
			}
			st.Whiteouts++
			continue
		}
		var s unix.Stat_t
		if err := unix.Fstatat(root, path, &s, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		if m.IsWhiteout(root, path, &s) {
			changed, err := m.rewriteWhiteout(root, dir, name, &s, to)
			if err != nil {
				return err
			}
			if to == Xattr {
				holdsXattrWhiteouts = true
			}
			if changed {
				st.Whiteouts++
			}
			continue
		}
		if s.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		if to == Aufs && m.hasOpaqueXattr(root, path) {
			if err := m.SetOpaqueFormat(root, path, Aufs); err != nil {
				return err
			}
			if err := m.ClearOpaque(root, path); err != nil {
				return err
			}
			st.Opaques++
		}
		if err := m.convertDir(root, path, to, st); err != nil {
			return err
		}
	}
	if holdsXattrWhiteouts && !m.IsOpaque(root, dirOrDot(dir)) {
		return m.MarkHoldsXattrWhiteouts(root, dirOrDot(dir))
	}
	if to != Xattr {
		// A directory that only held xattr whiteouts needs no mark now.
		for _, p := range m.readPrefixes() {
			if v, err := sysx.Getxattr(root, dirOrDot(dir), p+opaqueSuffix); err == nil && string(v) == "x" {
				sysx.Removexattr(root, dirOrDot(dir), p+opaqueSuffix)
			}
		}
	}
	return nil
}

// hasOpaqueXattr reports an overlay opaque xattr ("y") on path.
func (m Markers) hasOpaqueXattr(root int, path string) bool {
	for _, p := range m.readPrefixes() {
		if v, err := sysx.Getxattr(root, path, p+opaqueSuffix); err == nil && string(v) == "y" {
			return true
		}
	}
	return false
}

// aufsToOverlay replaces dir/.wh.NAME by an overlay whiteout at NAME.
// Where the layer also has NAME (aufs lets a branch hold both: the entry
// shows, the whiteout hides the branches below), a directory becomes
// opaque and anything else simply stays.
func (m Markers) aufsToOverlay(root int, dir, name string, to Format) error {
	path := join(dir, name)
	var s unix.Stat_t
	switch err := unix.Fstatat(root, path, &s, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil && s.Mode&unix.S_IFMT == unix.S_IFDIR:
		if err := m.SetOpaque(root, path); err != nil {
			return err
		}
	case err == nil:
	case errors.Is(err, unix.ENOENT):
		if err := m.placeWhiteout(root, dir, name, to); err != nil {
			return err
		}
	default:
		return fmt.Errorf("stat %s: %w", path, err)
	}
	marker := join(dir, AufsWhiteoutOf(name))
	if err := unix.Unlinkat(root, marker, 0); err != nil {
		return fmt.Errorf("remove %s: %w", marker, err)
	}
	return nil
}

// rewriteWhiteout turns the overlay whiteout at dir/name into format to;
// it reports whether anything changed.
func (m Markers) rewriteWhiteout(root int, dir, name string, s *unix.Stat_t, to Format) (bool, error) {
	path := join(dir, name)
	isChardev := IsChardevWhiteout(s)
	switch {
	case to == Chardev && isChardev, to == Xattr && !isChardev:
		return false, nil
	case to == Aufs:
		if err := m.placeWhiteout(root, dir, name, Aufs); err != nil {
			return false, err
		}
		if err := unix.Unlinkat(root, path, 0); err != nil {
			return false, fmt.Errorf("remove %s: %w", path, err)
		}
		return true, nil
	}
	// chardev <-> xattr: made beside, renamed over.
	return true, m.placeWhiteout(root, dir, name, to)
}

// placeWhiteout makes an overlay whiteout for name in dir (atomically
// over whatever is there), or the aufs .wh. file beside it.
func (m Markers) placeWhiteout(root int, dir, name string, f Format) error {
	tmp := join(dir, fmt.Sprintf(".unionmount-convert-%d", unix.Getpid()))
	if err := m.PrepareWhiteout(root, tmp, f); err != nil {
		if f == Chardev && IsPermissionError(err) {
			return fmt.Errorf("%w (device nodes cannot be made here: convert with --whiteout=xattr)", err)
		}
		return err
	}
	target := join(dir, name)
	if f == Aufs {
		target = join(dir, AufsWhiteoutOf(name))
	}
	if err := unix.Renameat(root, tmp, root, target); err != nil {
		unix.Unlinkat(root, tmp, 0)
		return fmt.Errorf("place whiteout %s: %w", target, err)
	}
	return nil
}

func dirOrDot(dir string) string {
	if dir == "" {
		return "."
	}
	return dir
}
