package unionfs_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
	"github.com/unionmount/unionmount/whiteout"
)

// A layer written by kernel overlay (device-node whiteouts, opaque
// xattrs) converted to aufs and back keeps the merged view of the union
// it is the top of, and holds only the target format's markers.
func TestConvertKeepsTheMergedView(t *testing.T) {
	fstest.RequireFUSE(t)
	fstest.RequireKernelOverlay(t)
	k := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, k.Lowers[0], fstest.Spec{"f": "F", "d/a": "a", "d/b": "b", "o/x": "x", "keep/k": "k"})
	unmount, err := fstest.StartKernelOverlay(k)
	require.NoError(t, err)
	require.NoError(t, os.Remove(k.Mount+"/f"))
	require.NoError(t, os.Remove(k.Mount+"/d/a"))
	require.NoError(t, os.RemoveAll(k.Mount+"/o"))
	require.NoError(t, os.Mkdir(k.Mount+"/o", 0o755))
	require.NoError(t, os.WriteFile(k.Mount+"/o/new", []byte("n"), 0o644))
	require.NoError(t, unmount())

	// The kernel's upper becomes the top lower of a read-only union.
	merged := func(t *testing.T) fstest.Snapshot {
		l := fstest.NewLayers(t, 2)
		fstest.CopyTree(t, k.Upper, l.Lowers[0])
		fstest.CopyTree(t, k.Lowers[0], l.Lowers[1])
		m, err := uniontest.Start(&fstest.Layers{Lowers: l.Lowers, Mount: l.Mount})
		require.NoError(t, err)
		defer func() { require.NoError(t, m.Unmount()) }()
		s, err := fstest.TakeSnapshot(l.Mount)
		require.NoError(t, err)
		return s
	}
	want := merged(t)
	assert.Equal(t, "d d/b keep keep/k o o/new", want.Paths())

	markers := whiteout.Markers{Prefix: whiteout.TrustedPrefix}
	var root int
	root, err = unix.Open(k.Upper, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer unix.Close(root)

	st, err := markers.Convert(root, whiteout.Aufs)
	require.NoError(t, err)
	assert.Equal(t, whiteout.ConvertStats{Whiteouts: 2, Opaques: 1}, st)
	assert.FileExists(t, k.Upper+"/.wh.f")
	assert.FileExists(t, k.Upper+"/d/.wh.a")
	assert.FileExists(t, k.Upper+"/o/.wh..wh..opq")
	assert.NoFileExists(t, k.Upper+"/f")
	_, err = unix.Lgetxattr(k.Upper+"/o", "trusted.overlay.opaque", nil)
	assert.Equal(t, unix.ENODATA, err, "the opaque xattr is gone")
	assert.Equal(t, want, merged(t), "aufs markers hide the same names")

	st, err = markers.Convert(root, whiteout.Chardev)
	require.NoError(t, err)
	assert.Equal(t, whiteout.ConvertStats{Whiteouts: 2, Opaques: 1}, st)
	var s unix.Stat_t
	require.NoError(t, unix.Lstat(k.Upper+"/f", &s))
	assert.True(t, whiteout.IsChardevWhiteout(&s))
	assert.NoFileExists(t, k.Upper+"/.wh.f")
	assert.Equal(t, want, merged(t), "back to overlay markers")

	// Kernel overlay reads the round-tripped upper as it wrote it.
	require.NoError(t, os.RemoveAll(k.Work))
	require.NoError(t, os.Mkdir(k.Work, 0o755))
	unmount, err = fstest.StartKernelOverlay(k)
	require.NoError(t, err)
	got, err := fstest.TakeSnapshot(k.Mount)
	require.NoError(t, unmount())
	require.NoError(t, err)
	assert.Equal(t, want.Paths(), got.Paths())

	// And to xattr whiteouts, which kernel overlay 6.7+ reads too.
	st, err = markers.Convert(root, whiteout.Xattr)
	require.NoError(t, err)
	assert.Equal(t, 2, st.Whiteouts)
	require.NoError(t, unix.Lstat(filepath.Join(k.Upper, "d/a"), &s))
	assert.Equal(t, uint32(unix.S_IFREG), s.Mode&unix.S_IFMT)
	assert.Equal(t, want, merged(t), "xattr whiteouts")
}
