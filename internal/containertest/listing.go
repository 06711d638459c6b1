package containertest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Listing maps each path to what it is: type, mode, owner, link count,
// and a regular file's size and SHA-256 or a symlink's target.
type Listing map[string]string

// ListScript is a shell script, for a container, that prints a Listing of
// the whole root filesystem but for what the runtime mounts or writes
// per container (/proc, /sys, /dev, /run, /etc/hostname, /etc/hosts,
// /etc/resolv.conf) and the extra mount points given as arguments. It
// needs only find, xargs and sha256sum (all in Debian's minbase).
const ListScript = `prune='-path /proc -o -path /sys -o -path /dev -o -path /run -o -path /etc/hostname -o -path /etc/hosts -o -path /etc/resolv.conf'
for p in "$@"; do prune="$prune -o -path $p"; done
find / -xdev \( $prune \) -prune -o -type d -printf 'L\t%p\td %m %U:%G %n\n' -o -type f -printf 'L\t%p\tf %m %U:%G %n %s\n' -o -printf 'L\t%p\t%y %m %U:%G %n %l\n'
find / -xdev \( $prune \) -prune -o -type f -print0 | xargs -0 -r sha256sum | sed 's/^/H /'
`

// ParseListing reads ListScript's output from out, ignoring other lines.
func ParseListing(out string) (Listing, error) {
	l := Listing{}
	hashes := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "L\t"):
			f := strings.SplitN(line, "\t", 3)
			if len(f) != 3 {
				return nil, fmt.Errorf("bad listing line %q", line)
			}
			l[f[1]] = f[2]
		case strings.HasPrefix(line, "H "):
			sum, name, ok := strings.Cut(strings.TrimPrefix(line, "H "), "  ")
			if !ok {
				return nil, fmt.Errorf("bad hash line %q", line)
			}
			hashes[name] = sum
		}
	}
	if len(l) == 0 {
		return nil, fmt.Errorf("no listing in the output:\n%s", tail(out, 20))
	}
	for name, sum := range hashes {
		if _, ok := l[name]; !ok {
			return nil, fmt.Errorf("%s was hashed but not listed", name)
		}
		l[name] += " sha256:" + sum
	}
	return l, nil
}

// Differences lists how got differs from want, one line per path,
// leaving out the paths skip accepts.
func Differences(want, got Listing, skip func(path string) bool) []string {
	var out []string
	for p, w := range want {
		if skip != nil && skip(p) {
			continue
		}
		if g, ok := got[p]; !ok {
			out = append(out, fmt.Sprintf("%s: missing (want %s)", p, w))
		} else if g != w {
			out = append(out, fmt.Sprintf("%s: %s, want %s", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok && (skip == nil || !skip(p)) {
			out = append(out, fmt.Sprintf("%s: unexpected %s", p, g))
		}
	}
	sort.Strings(out)
	return out
}

// LayerListing saves image with podman save and lists its top layer
// (the one a commit made): each entry's type, mode, owner, size, link
// target and content hash. Whiteouts appear under their .wh. names.
func LayerListing(t testing.TB, p *Podman, image string) Listing {
	t.Helper()
	archive := filepath.Join(p.scratch(), "save-"+strings.NewReplacer("/", "_", ":", "_").Replace(image)+".tar")
	p.Run(t, "save", "--format", "docker-archive", "--output", archive, image)
	defer os.Remove(archive)
	l, err := topLayer(archive)
	if err != nil {
		t.Fatalf("list the top layer of %s: %v", image, err)
	}
	return l
}

// topLayer reads a docker-archive: manifest.json names the layers, the
// last is the top one.
func topLayer(archive string) (Listing, error) {
	var manifest []struct{ Layers []string }
	if err := readMember(archive, "manifest.json", func(r io.Reader) error {
		return json.NewDecoder(r).Decode(&manifest)
	}); err != nil {
		return nil, err
	}
	if len(manifest) != 1 || len(manifest[0].Layers) == 0 {
		return nil, fmt.Errorf("manifest.json names no layers")
	}
	layers := manifest[0].Layers
	l := Listing{}
	err := readMember(archive, layers[len(layers)-1], func(r io.Reader) error {
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			name := "/" + strings.TrimSuffix(path.Clean(h.Name), "/")
			desc := fmt.Sprintf("%c %o %d:%d", h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid)
			switch h.Typeflag {
			case tar.TypeReg:
				sum := sha256.New()
				if _, err := io.Copy(sum, tr); err != nil {
					return err
				}
				desc += fmt.Sprintf(" %d sha256:%s", h.Size, hex.EncodeToString(sum.Sum(nil)))
			case tar.TypeSymlink, tar.TypeLink:
				desc += " " + h.Linkname
			case tar.TypeChar, tar.TypeBlock:
				desc += fmt.Sprintf(" %d,%d", h.Devmajor, h.Devminor)
			}
			l[name] = desc
		}
	})
	return l, err
}

// readMember calls fn with the member name of the tar file archive.
func readMember(archive, name string, fn func(io.Reader) error) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("%s has no %s", archive, name)
		}
		if err != nil {
			return err
		}
		if path.Clean(h.Name) == path.Clean(name) {
			return fn(tr)
		}
	}
}
