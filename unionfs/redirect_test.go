package unionfs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// redirectCase is a stack of three lower layers (topmost first) and
// directory renames in the union.
type redirectCase struct {
	name   string
	lowers []fstest.Spec
	// opaque are directories made opaque, whiteouts names hidden and
	// redirects directories redirected ("TARGET" after an "="), each as
	// "LAYER:PATH".
	opaque, whiteouts, redirects []string
	// moves are the renames, each done on a mount of its own.
	moves [][2]string
}

// Each case hides part of the rename's source in a middle layer: the
// redirect, followed after a remount, must be stopped there as kernel
// overlay's lookup is, not read straight from the bottom layer.
var redirectCases = []redirectCase{
	{
		name: "an opaque parent in the middle layer hides the bottom layer",
		lowers: []fstest.Spec{
			{"p/": ""},
			{"r/s/": "", "r/kept": "k"},
			{"r/s/b": "hidden b", "r/other": "o"},
		},
		opaque: []string{"1:r"},
		moves:  [][2]string{{"r/s", "p/moved"}},
	},
	{
		name: "a symlink parent in the middle layer hides the bottom layer",
		lowers: []fstest.Spec{
			{"p/s/top": "t"},
			{"p": "->elsewhere", "elsewhere/s/mid": "m"},
			{"p/s/a": "hidden a"},
		},
		moves: [][2]string{{"p/s", "p/moved"}},
	},
	{
		name: "a symlink on the way in the bottom layer is not followed",
		lowers: []fstest.Spec{
			{"q/": ""},
			{"r/s/a/f": "f"},
			{"r/s": "->s/a"},
		},
		moves: [][2]string{{"r/s/a", "q/s"}},
	},
	{
		name: "a whiteout parent in the middle layer hides the bottom layer",
		lowers: []fstest.Spec{
			{"p/": "", "r/s/top": "t"},
			{},
			{"r/s/b": "hidden b"},
		},
		whiteouts: []string{"1:r"},
		moves:     [][2]string{{"r/s", "p/moved"}},
	},
	{
		name: "a redirected parent in the top layer sends the lower layers elsewhere",
		lowers: []fstest.Spec{
			{"b/": "", "q/": ""},
			{"b/c/hidden": "h", "a/c/mid": "m"},
			{"a/c/f": "f"},
		},
		// as kernel overlay leaves a layer in which it renamed a to b		redirects: []string{"0:b=/a"},
		whiteouts: []string{"0:a"},
		moves:     [][2]string{{"b/c", "q/c"}},
	},
	{
		name: "a directory renamed in its parent, then a child of it moved away",
		lowers: []fstest.Spec{
			{"q/": ""},
			{"p/s/c/f": "f"},
			{"p/s/c/g": "g", "p/s/h": "h"},
		},
		moves: [][2]string{{"p/s", "p/t"}, {"p/t/c", "q/c"}},
	},
}

// writeRedirectCase makes the case's layers under l.
func writeRedirectCase(t *testing.T, c redirectCase, l *fstest.Layers) {
	for i, spec := range c.lowers {
		fstest.WriteTree(t, l.Lowers[i], spec)
	}
	at := func(o string) (string, string) {
		layer, path, _ := strings.Cut(o, ":")
		path, value, _ := strings.Cut(path, "=")
		return filepath.Join(l.Lowers[layer[0]-'0'], path), value
	}
	for _, o := range c.opaque {
		dir, _ := at(o)
		require.NoError(t, unix.Setxattr(dir, "trusted.overlay.opaque", []byte("y"), 0))
	}
	for _, o := range c.redirects {
		dir, target := at(o)
		require.NoError(t, unix.Setxattr(dir, "trusted.overlay.redirect", []byte(target), 0))
	}
	for _, o := range c.whiteouts {
		p, _ := at(o)
		require.NoError(t, unix.Mknod(p, unix.S_IFCHR|0o600, 0))
	}
}

// TestRedirectsAfterRemountHonourEveryLayer renames a directory on one
// mount (kernel overlay or unionmount), unmounts, mounts the same layers
// again (with either) and compares the merged view with kernel overlay's
// on both sides.
func TestRedirectsAfterRemountHonourEveryLayer(t *testing.T) {
	fstest.RequireKernelOverlay(t)
	fstest.RequireFUSE(t)
	if fstest.InUserNamespace() {
		t.Skip(noRedirectInNamespace)
	}
	type mounter func(l *fstest.Layers) (func() error, error)
	kernel := func(l *fstest.Layers) (func() error, error) {
		return fstest.StartKernelOverlay(l, kernelOverlayOptions()...)
	}
	union := func(l *fstest.Layers) (func() error, error) {
		m, err := uniontest.Start(l)
		if err != nil {
			return nil, err
		}
		return m.Unmount, nil
	}
	// run does the case's renames, each on a fresh mount by the next of
	// writers (the last one for the rest), then mounts the layers with
	// reader. It returns the merged view after the last rename and after
	// the remount.
	run := func(t *testing.T, c redirectCase, writers []mounter, reader mounter) (before, after fstest.Snapshot) {
		l := fstest.NewLayers(t, len(c.lowers))
		writeRedirectCase(t, c, l)
		for i, mv := range c.moves {
			unmount, err := writers[min(i, len(writers)-1)](l)
			require.NoError(t, err)
			err = os.Rename(filepath.Join(l.Mount, mv[0]), filepath.Join(l.Mount, mv[1]))
			if err == nil {
				before, err = fstest.TakeSnapshot(l.Mount)
			}
			require.NoError(t, unmount())
			require.NoError(t, err, "rename %s %s", mv[0], mv[1])
		}
		unmount, err := reader(l)
		require.NoError(t, err)
		after, err = fstest.TakeSnapshot(l.Mount)
		require.NoError(t, unmount())
		require.NoError(t, err)
		return before, after
	}
	for _, c := range redirectCases {
		t.Run(c.name, func(t *testing.T) {
			_, want := run(t, c, []mounter{kernel}, kernel)
			combos := []struct {
				name    string
				writers []mounter
				reader  mounter
			}{
				{"unionmount then unionmount", []mounter{union}, union},
				{"kernel overlay then unionmount", []mounter{kernel}, union},
				{"unionmount then kernel overlay", []mounter{union}, kernel},
			}
			if len(c.moves) > 1 {
				combos = append(combos, struct {
					name    string
					writers []mounter
					reader  mounter
				}{"kernel overlay's rename, then unionmount's, then kernel overlay", []mounter{kernel, union}, kernel})
			}
			for _, combo := range combos {
				t.Run(combo.name, func(t *testing.T) {
					before, after := run(t, c, combo.writers, combo.reader)
					if d := fstest.Diff(want, before); len(d) > 0 {
						t.Errorf("before the remount:\n  %s", strings.Join(d, "\n  "))
					}
					if d := fstest.Diff(want, after); len(d) > 0 {
						t.Errorf("after the remount:\n  %s", strings.Join(d, "\n  "))
					}
				})
			}
		})
	}
}
