package unionfs_test

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/pkg/xattr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

const metacopyXattr = "trusted.overlay.metacopy"

// pattern is data no hole punching could fake.
func pattern(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%23)
	}
	return string(b)
}

// With metacopy=on a chmod copies up the metadata only; the data stays
// below, is read from there, and is copied up at the first write, which
// open readers then see (where the daemon serves lower files: with lower
// files through passthrough that write waits for the readers instead, as
// passthrough_test.go checks with metacopy=on too).
func TestMetacopyKeepsDataBelowUntilTheFirstWrite(t *testing.T) {
	fstest.RequireRoot(t) // trusted.* xattrs
	data := pattern(64 << 10)
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": data, "g": data, "empty": ""})
	m := uniontest.Mount(t, l, "metacopy=on", "passthrough=upper")
	f := l.Mount + "/f"
	before := lstat(t, f)
	lowerSt := lstat(t, l.Lowers[0]+"/f")

	require.NoError(t, os.Chmod(f, 0o600))
	require.NoError(t, os.Chown(l.Mount+"/g", 123, 456))
	require.NoError(t, os.Chmod(l.Mount+"/empty", 0o600))
	up := lstat(t, l.Upper+"/f")
	assert.Equal(t, int64(len(data)), up.Size)
	assert.Zero(t, up.Blocks, "the upper copy holds no data")
	_, err := xattr.LGet(l.Upper+"/f", metacopyXattr)
	assert.NoError(t, err, "marked metacopy")
	_, err = xattr.LGet(l.Upper+"/empty", metacopyXattr)
	assert.Error(t, err, "an empty file is copied whole")

	after := lstat(t, f)
	assert.Equal(t, uint32(0o600), after.Mode&0o7777)
	assert.Equal(t, before.Ino, after.Ino)
	assert.Equal(t, lowerSt.Blocks, after.Blocks, "blocks are the data's")
	assert.Equal(t, data, readFile(t, f))
	g := lstat(t, l.Mount+"/g")
	assert.Equal(t, [2]uint32{123, 456}, [2]uint32{g.Uid, g.Gid})

	// A reader opened now reads below; fstat shows the upper metadata.
	r, err := os.Open(f)
	require.NoError(t, err)
	var rst unix.Stat_t
	require.NoError(t, unix.Fstat(int(r.Fd()), &rst))
	assert.Equal(t, uint32(0o600), rst.Mode&0o7777)

	// The first write copies the data up; the reader sees the new data.
	w, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = w.WriteString("tail")
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = xattr.LGet(l.Upper+"/f", metacopyXattr)
	assert.Error(t, err, "no longer metacopy")
	assert.Equal(t, data+"tail", readFile(t, l.Upper+"/f"))
	got, err := io.ReadAll(r)
	require.NoError(t, err)
	assert.True(t, bytes.Equal([]byte(data+"tail"), got), "the open reader sees the write")
	require.NoError(t, r.Close())
	assert.Equal(t, uint32(0o600), lstat(t, f).Mode&0o7777, "the copy keeps the new mode")
	assert.Equal(t, before.Ino, lstat(t, f).Ino)

	// Truncation to zero of a metadata-only copy drops the data.
	require.NoError(t, os.Truncate(l.Mount+"/g", 0))
	assert.Equal(t, "", readFile(t, l.Mount+"/g"))
	g = lstat(t, l.Mount+"/g")
	assert.Equal(t, [2]uint32{123, 456}, [2]uint32{g.Uid, g.Gid})
	require.NoError(t, m.Unmount())

	// Kernel overlay with metacopy=on reads the layers this wrote.
	fstest.RequireKernelOverlay(t)
	require.NoError(t, os.Chmod(l.Lowers[0], 0o755))
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"h": data})
	m2, err := uniontest.Start(l, "metacopy=on")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(l.Mount+"/h", 0o640))
	require.NoError(t, m2.Unmount())
	unmount, err := fstest.StartKernelOverlay(l, "redirect_dir=on", "metacopy=on", "index=off")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, l.Mount+"/h"))
	assert.Equal(t, uint32(0o640), lstat(t, l.Mount+"/h").Mode&0o7777)
	// And this reads the kernel's metadata-only copies.
	require.NoError(t, os.Chmod(l.Mount+"/h", 0o604))
	require.NoError(t, unmount())
	uniontest.Mount(t, l, "metacopy=on")
	assert.Equal(t, data, readFile(t, l.Mount+"/h"))
	assert.Equal(t, uint32(0o604), lstat(t, l.Mount+"/h").Mode&0o7777)
}
