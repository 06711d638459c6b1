package tarlayer_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/tarlayer"
	"github.com/unionmount/unionmount/unionfs/uniontest"
	"github.com/unionmount/unionmount/whiteout"
)

// entry is one tar entry of a hand-made layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	xattrs           map[string]string
}

func makeTar(t *testing.T, gz bool, entries ...entry) *os.File {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		require.NoError(t, tw.WriteHeader(h))
		if h.Typeflag == tar.TypeReg {
			_, err := tw.Write([]byte(e.body))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	data := buf.Bytes()
	if gz {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(data)
		zw.Close()
		data = z.Bytes()
	}
	p := filepath.Join(t.TempDir(), "layer.tar")
	require.NoError(t, os.WriteFile(p, data, 0o644))
	f, err := os.Open(p)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// appLayer removes etc/old, replaces app/lib wholesale and adds tools.
func appLayer(t *testing.T, gz bool) *os.File {
	return makeTar(t, gz,
		entry{name: "etc/", typ: tar.TypeDir},
		entry{name: "etc/.wh.old"},
		entry{name: "etc/motd", body: "hello from the layer"},
		entry{name: "app/", typ: tar.TypeDir},
		entry{name: "app/lib/", typ: tar.TypeDir},
		entry{name: "app/lib/.wh..wh..opq"},
		entry{name: "app/lib/z", body: "new lib"},
		entry{name: "bin/", typ: tar.TypeDir},
		entry{name: "bin/tool", body: "#!/bin/sh\n", mode: 0o755, xattrs: map[string]string{"user.origin": "layer"}},
		entry{name: "bin/link", typ: tar.TypeSymlink, link: "tool"},
		entry{name: "bin/hard", typ: tar.TypeLink, link: "bin/tool"},
		entry{name: ".wh.gone", typ: tar.TypeReg},
	)
}

var baseLayer = fstest.Spec{
	"etc/passwd": "root:x:0:0", "etc/old": "stale", "app/lib/x": "x", "app/lib/y": "y",
	"keep/k": "k", "gone/inside": "i",
}

// The merged tree an app layer over the base layer must show.
var wantMerged = []string{
	"app", "app/lib", "app/lib/z", "bin", "bin/hard", "bin/link", "bin/tool",
	"etc", "etc/motd", "etc/passwd", "keep", "keep/k",
}

// A layer tarball applied in each format, mounted over a base layer,
// gives the merged tree the tarball describes; kernel overlay agrees on
// the overlay formats.
func TestAppliedLayerMountsAsTheExpectedMergedTree(t *testing.T) {
	fstest.RequireFUSE(t)
	for _, format := range []whiteout.Format{whiteout.Chardev, whiteout.Xattr, whiteout.Aufs} {
		t.Run(format.String(), func(t *testing.T) {
			l := fstest.NewLayers(t, 2)
			fstest.WriteTree(t, l.Lowers[1], baseLayer)
			st, err := tarlayer.Apply(appLayer(t, format == whiteout.Xattr), l.Lowers[0], tarlayer.Options{Format: format, Markers: whiteout.Markers{Prefix: whiteout.TrustedPrefix}})
			require.NoError(t, err)
			assert.Equal(t, tarlayer.Stats{Entries: 12, Whiteouts: 2, Opaques: 1}, st)

			fi, err := os.Lstat(l.Lowers[0] + "/bin/tool")
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
			assert.Equal(t, time.Unix(1700000000, 0), fi.ModTime())
			hard, err := os.Lstat(l.Lowers[0] + "/bin/hard")
			require.NoError(t, err)
			assert.True(t, os.SameFile(fi, hard), "a hard link in the tarball is one")

			uniontest.Mount(t, l)
			assert.Equal(t, wantMerged, walk(t, l.Mount))
			data, err := os.ReadFile(l.Mount + "/app/lib/z")
			require.NoError(t, err)
			assert.Equal(t, "new lib", string(data))
			v := make([]byte, 16)
			n, err := unix.Lgetxattr(l.Mount+"/bin/tool", "user.origin", v)
			require.NoError(t, err)
			assert.Equal(t, "layer", string(v[:n]))

			if format != whiteout.Aufs {
				k := fstest.NewLayers(t, 2)
				fstest.CopyTree(t, l.Lowers[0], k.Lowers[0])
				fstest.CopyTree(t, l.Lowers[1], k.Lowers[1])
				fstest.MountKernelOverlay(t, k)
				assert.Equal(t, wantMerged, walk(t, k.Mount), "kernel overlay reads the applied layer the same")
			}
		})
	}
}

func walk(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(root, p); rel != "." {
			out = append(out, rel)
		}
		return nil
	})
	require.NoError(t, err)
	sort.Strings(out)
	return out
}

// Tarballs that name paths outside the target are refused whole: nothing
// is written inside the target, nothing outside it.
func TestUnsafeTarballsAreRefusedAndWriteNothing(t *testing.T) {
	cases := map[string][]entry{
		"dot-dot":        {{name: "ok", body: "fine"}, {name: "../../etc/passwd", body: "pwned"}},
		"absolute":       {{name: "ok", body: "fine"}, {name: "/tmp/unionmount-absolute", body: "pwned"}},
		"symlink parent": {{name: "ok", body: "fine"}, {name: "escape", typ: tar.TypeSymlink, link: "OUTSIDE"}, {name: "escape/file", body: "pwned"}},
		"hard link out":  {{name: "ok", body: "fine"}, {name: "h", typ: tar.TypeLink, link: "../outside/secret"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			target, outside := filepath.Join(base, "target"), filepath.Join(base, "outside")
			require.NoError(t, os.Mkdir(target, 0o755))
			require.NoError(t, os.Mkdir(outside, 0o755))
			require.NoError(t, os.WriteFile(outside+"/secret", []byte("s"), 0o600))
			for i := range entries {
				if entries[i].link == "OUTSIDE" {
					entries[i].link = outside
				}
			}
			_, err := tarlayer.Apply(makeTar(t, false, entries...), target, tarlayer.Options{Format: whiteout.Aufs})
			require.ErrorIs(t, err, tarlayer.ErrUnsafe)
			assert.Empty(t, walk(t, target), "nothing written in the target")
			assert.Equal(t, []string{"secret"}, walk(t, outside), "nothing written outside")
			_, err = os.Stat("/tmp/unionmount-absolute")
			assert.True(t, os.IsNotExist(err))
		})
	}

	// A symlink already in the target is no way out either.
	base := t.TempDir()
	target, outside := filepath.Join(base, "target"), filepath.Join(base, "outside")
	require.NoError(t, os.Mkdir(target, 0o755))
	require.NoError(t, os.Mkdir(outside, 0o755))
	require.NoError(t, os.Symlink(outside, target+"/link"))
	_, err := tarlayer.Apply(makeTar(t, false, entry{name: "link/file", body: "pwned"}), target, tarlayer.Options{Format: whiteout.Aufs})
	require.ErrorIs(t, err, tarlayer.ErrUnsafe)
	assert.Empty(t, walk(t, outside))
}

// Applied flattened onto a full tree (the base layer's files, as a thin
// volume's filesystem holds them), a layer leaves the tree the union of
// the two shows, and no marker of any format.
func TestFlattenedLayerLeavesTheMergedTreeAndNoMarkers(t *testing.T) {
	for _, gz := range []bool{false, true} {
		dir := t.TempDir()
		fstest.WriteTree(t, dir, baseLayer)
		st, err := tarlayer.Apply(appLayer(t, gz), dir, tarlayer.Options{Flatten: true, Format: whiteout.Chardev, Markers: whiteout.Markers{Prefix: whiteout.TrustedPrefix}})
		require.NoError(t, err)
		assert.Equal(t, tarlayer.Stats{Entries: 12, Whiteouts: 2, Opaques: 1}, st)
		assert.Equal(t, wantMerged, walk(t, dir))
		data, err := os.ReadFile(dir + "/app/lib/z")
		require.NoError(t, err)
		assert.Equal(t, "new lib", string(data))
		data, err = os.ReadFile(dir + "/etc/passwd")
		require.NoError(t, err)
		assert.Equal(t, "root:x:0:0", string(data), "the tree's own files stay")
		for _, p := range walk(t, dir) {
			var s unix.Stat_t
			require.NoError(t, unix.Lstat(filepath.Join(dir, p), &s))
			assert.NotEqual(t, uint32(unix.S_IFCHR), s.Mode&unix.S_IFMT, "%s: no whiteout device", p)
			names := make([]byte, 4096)
			n, _ := unix.Llistxattr(filepath.Join(dir, p), names)
			assert.NotContains(t, string(names[:n]), "overlay.", "%s: no overlay marker", p)
		}
	}
}
