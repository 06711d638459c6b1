// Package tarlayer applies an OCI or Docker image layer tarball (plain or
// gzip-compressed, with ".wh.NAME" whiteouts and ".wh..wh..opq" opaque
// markers) to a layer directory, writing the markers in the union
// format the caller chooses, or to a full tree, where the markers
// delete what they hide (Options.Flatten).
//
// A layer is untrusted input: every name is checked before anything is
// written, so a tarball that names a path outside the target (through
// "..", an absolute name, or a parent that is a symlink) is refused
// whole, and while writing, every path is resolved beneath the target
// with symlinks refused by the kernel (openat2 RESOLVE_BENEATH).
package tarlayer

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/unionmount/unionmount/whiteout"
)

// ErrUnsafe marks a tarball refused for naming paths outside the target.
var ErrUnsafe = errors.New("unsafe layer")

// Options says how markers are written.
type Options struct {
	// Format is the whiteout format to write.
	Format whiteout.Format
	// Markers gives the xattr namespace of overlay markers.
	Markers whiteout.Markers
	// Flatten applies the layer onto a full tree rather than a layer
	// dir: a whiteout deletes what it names and an opaque marker what
	// its directory held before, and no marker is written (a thin
	// volume's filesystem, as Docker's devicemapper driver applies
	// layers).
	Flatten bool
}

// Stats counts what Apply wrote.
type Stats struct {
	Entries, Whiteouts, Opaques int
}

// Apply applies the layer tarball in file to the directory dir. It reads
// the tarball twice: once to check every name, once to write.
func Apply(file *os.File, dir string, opts Options) (Stats, error) {
	if err := check(file, dir); err != nil {
		return Stats{}, err
	}
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		return Stats{}, fmt.Errorf("rewind %s: %w", file.Name(), err)
	}
	w, err := newWriter(dir, opts)
	if err != nil {
		return Stats{}, err
	}
	defer w.close()
	err = forEach(file, func(h *tar.Header, r io.Reader) error { return w.entry(h, r) })
	if err == nil {
		err = w.finish()
	}
	return w.stats, err
}

// forEach calls fn for every entry of the (maybe gzipped) tarball.
func forEach(file *os.File, fn func(*tar.Header, io.Reader) error) error {
	br := bufio.NewReader(file)
	var r io.Reader = br
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: %w", file.Name(), err)
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file.Name(), err)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// cleanName turns a tar entry name into a clean path relative to the
// target, or refuses it.
func cleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: %q is an absolute name", ErrUnsafe, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q climbs out with ..", ErrUnsafe, name)
		}
	}
	p := path.Clean(name)
	if p == "." {
		return "", nil
	}
	return p, nil
}

// check reads every header and refuses the tarball when a name or hard
// link target leaves the target, or when an entry lies under a symlink
// (made earlier in the tarball, or already in dir).
func check(file *os.File, dir string) error {
	symlinks := map[string]bool{}
	return forEach(file, func(h *tar.Header, _ io.Reader) error {
		p, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		if h.Typeflag == tar.TypeLink {
			if _, err := cleanName(h.Linkname); err != nil {
				return fmt.Errorf("hard link %q: %w", h.Name, err)
			}
		}
		for parent := path.Dir(p); parent != "." && parent != "/"; parent = path.Dir(parent) {
			if symlinks[parent] {
				return fmt.Errorf("%w: %q lies under %q, a symlink in the layer", ErrUnsafe, h.Name, parent)
			}
			if fi, err := os.Lstat(path.Join(dir, parent)); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				return fmt.Errorf("%w: %q lies under %q, a symlink in %s", ErrUnsafe, h.Name, parent, dir)
			}
		}
		if h.Typeflag == tar.TypeSymlink {
			symlinks[p] = true
		} else {
			delete(symlinks, p)
		}
		return nil
	})
}
