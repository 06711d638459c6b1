package tarlayer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
	"github.com/unionmount/unionmount/whiteout"
)

// writer writes entries under one target directory.
type writer struct {
	root int
	opts Options
	// created holds the paths this tarball made, which an opaque marker
	// later in the same directory must keep.
	created map[string]bool
	// dirTimes are set last: writing into a directory changes its mtime.
	dirTimes []dirTime
	stats    Stats
}

type dirTime struct {
	path  string
	times []unix.Timespec
}

func newWriter(dir string, opts Options) (*writer, error) {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", dir, err)
	}
	return &writer{root: root, opts: opts, created: map[string]bool{}}, nil
}

func (w *writer) close() { unix.Close(w.root) }

// parent opens the directory holding p, beneath the target and through
// no symlink, and returns it with p's last name.
func (w *writer) parent(p string) (int, string, error) {
	dir, base := path.Split(p)
	if dir == "" {
		dir = "."
	}
	fd, err := unix.Openat2(w.root, dir, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return -1, "", fmt.Errorf("%w: the parent of %q is or passes a symlink", ErrUnsafe, p)
		}
		return -1, "", fmt.Errorf("open the parent of %q: %w", p, err)
	}
	return fd, base, nil
}

func (w *writer) entry(h *tar.Header, data io.Reader) error {
	p, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	if p == "" {
		return w.metadata(".", h) // the layer root itself
	}
	w.stats.Entries++
	base := path.Base(p)
	switch {
	case base == whiteout.AufsOpaque:
		return w.opaque(path.Dir(p))
	case strings.HasPrefix(base, whiteout.AufsPrefix+whiteout.AufsPrefix):
		return nil // other aufs bookkeeping: nothing to apply
	case whiteout.IsAufsName(base):
		hidden, _ := whiteout.HiddenByAufs(base)
		return w.whiteout(path.Join(path.Dir(p), hidden))
	}
	if err := w.make(p, h, data); err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	w.created[p] = true
	return w.metadata(p, h)
}

// make creates the object of one entry, replacing what stood at p
// unless both are directories.
func (w *writer) make(p string, h *tar.Header, data io.Reader) error {
	dfd, name, err := w.parent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	exists := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	if exists && !(h.Typeflag == tar.TypeDir && st.Mode&unix.S_IFMT == unix.S_IFDIR) {
		if err := sysx.RemoveAllAt(dfd, name); err != nil {
			return err
		}
	}
	mode := uint32(h.Mode) & 0o7777
	switch h.Typeflag {
	case tar.TypeDir:
		if exists && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil
		}
		return unix.Mkdirat(dfd, name, 0o700)
	case tar.TypeReg, tar.TypeRegA:
		return writeFile(dfd, name, data)
	case tar.TypeSymlink:
		return unix.Symlinkat(h.Linkname, dfd, name)
	case tar.TypeLink:
		target, _ := cleanName(h.Linkname)
		sfd, sname, err := w.parent(target)
		if err != nil {
			return err
		}
		defer unix.Close(sfd)
		return unix.Linkat(sfd, sname, dfd, name, 0)
	case tar.TypeChar:
		return unix.Mknodat(dfd, name, unix.S_IFCHR|mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))))
	case tar.TypeBlock:
		return unix.Mknodat(dfd, name, unix.S_IFBLK|mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))))
	case tar.TypeFifo:
		return unix.Mkfifoat(dfd, name, mode)
	}
	return fmt.Errorf("entry type %q is not supported", h.Typeflag)
}

// writeFile writes data to a new file beside name and renames it over,
// so a reader never sees half a file.
func writeFile(dfd int, name string, data io.Reader) error {
	tmp := ".unionmount-apply-" + name
	if len(tmp) > 255 {
		tmp = tmp[:255]
	}
	fd, err := unix.Openat(dfd, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = io.Copy(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, name)
	}
	if err != nil {
		unix.Unlinkat(dfd, tmp, 0)
	}
	return err
}

// metadata gives p the entry's owner, xattrs, mode and times, in that
// order (chown clears set-id bits).
func (w *writer) metadata(p string, h *tar.Header) error {
	if p == "." {
		return w.rootMetadata(h)
	}
	dfd, name, err := w.parent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	err = unix.Fchownat(dfd, name, h.Uid, h.Gid, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH)
	if err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%s: chown: %w", h.Name, err)
	}
	isLink := h.Typeflag == tar.TypeSymlink
	for key, value := range h.PAXRecords {
		attr, ok := strings.CutPrefix(key, "SCHILY.xattr.")
		if !ok || isLink {
			continue
		}
		if err := sysx.Setxattr(dfd, name, attr, []byte(value), 0); err != nil {
			return fmt.Errorf("%s: xattr %s: %w", h.Name, attr, err)
		}
	}
	if !isLink && h.Typeflag != tar.TypeLink {
		if err := unix.Fchmodat(dfd, name, uint32(h.Mode)&0o7777, 0); err != nil {
			return fmt.Errorf("%s: chmod: %w", h.Name, err)
		}
	}
	times := []unix.Timespec{unix.NsecToTimespec(h.AccessTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	if h.AccessTime.IsZero() {
		times[0] = times[1]
	}
	if h.Typeflag == tar.TypeDir {
		w.dirTimes = append(w.dirTimes, dirTime{p, times})
		return nil
	}
	if h.Typeflag == tar.TypeLink {
		return nil
	}
	if err := unix.UtimesNanoAt(dfd, name, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("%s: set times: %w", h.Name, err)
	}
	return nil
}

// rootMetadata gives the target directory itself the owner, mode and
// times of the tarball's "./" entry.
func (w *writer) rootMetadata(h *tar.Header) error {
	fd, err := unix.Openat(w.root, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the target: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, h.Uid, h.Gid); err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("chown the target: %w", err)
	}
	if err := unix.Fchmod(fd, uint32(h.Mode)&0o7777); err != nil {
		return fmt.Errorf("chmod the target: %w", err)
	}
	times := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
	w.dirTimes = append(w.dirTimes, dirTime{".", times})
	return nil
}

// whiteout hides p from the layers below: whatever this layer dir held
// there goes, and a whiteout in the chosen format takes its place.
func (w *writer) whiteout(p string) error {
	dfd, name, err := w.parent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := sysx.RemoveAllAt(dfd, name); err != nil {
		return err
	}
	delete(w.created, p)
	w.stats.Whiteouts++
	if w.opts.Flatten {
		return nil // deleting it was all
	}
	m := w.opts.Markers
	target := name
	if w.opts.Format == whiteout.Aufs {
		target = whiteout.AufsWhiteoutOf(name)
	}
	tmp := ".unionmount-apply-wh"
	if err := m.PrepareWhiteout(dfd, tmp, w.opts.Format); err != nil {
		if w.opts.Format == whiteout.Chardev && whiteout.IsPermissionError(err) {
			return fmt.Errorf("%w (device nodes cannot be made here: apply with --whiteout=xattr or aufs)", err)
		}
		return err
	}
	if err := unix.Renameat(dfd, tmp, dfd, target); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("place whiteout for %s: %w", p, err)
	}
	if w.opts.Format == whiteout.Xattr {
		return m.MarkHoldsXattrWhiteouts(dfd, ".")
	}
	return nil
}

// opaque makes dir hide the layers below: what the target held there
// before this tarball goes, and the directory gets the opaque marker.
func (w *writer) opaque(dir string) error {
	fd, err := unix.Openat2(w.root, dir, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mkdirat(w.root, dir, 0o755); err != nil {
			return fmt.Errorf("make %s for its opaque marker: %w", dir, err)
		}
		return w.opaque(dir)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	names, err := sysx.ReadNames(fd, ".")
	if err != nil {
		return err
	}
	for _, n := range names {
		if !w.created[path.Join(dir, n)] {
			if err := sysx.RemoveAllAt(fd, n); err != nil {
				return err
			}
		}
	}
	w.stats.Opaques++
	if w.opts.Flatten {
		return nil
	}
	return w.opts.Markers.SetOpaqueFormat(fd, ".", w.opts.Format)
}

// finish sets the directories' times, deepest first.
func (w *writer) finish() error {
	for i := len(w.dirTimes) - 1; i >= 0; i-- {
		d := w.dirTimes[i]
		if d.path == "." {
			fd, err := unix.Openat(w.root, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = unix.Futimes(fd, []unix.Timeval{unix.NsecToTimeval(unix.TimespecToNsec(d.times[0])), unix.NsecToTimeval(unix.TimespecToNsec(d.times[1]))})
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("set times of the target: %w", err)
			}
			continue
		}
		dfd, name, err := w.parent(d.path)
		if err != nil {
			return err
		}
		err = unix.UtimesNanoAt(dfd, name, d.times, unix.AT_SYMLINK_NOFOLLOW)
		unix.Close(dfd)
		if err != nil {
			return fmt.Errorf("%s: set times: %w", d.path, err)
		}
	}
	return nil
}
