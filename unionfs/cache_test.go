package unionfs_test

import (
	"errors"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// The kernel caches names, attributes and listings for an hour: every
// change made through the mount, by any name or descriptor, must show at
// once all the same.
func TestLongCachesNeverServeStaleNames(t *testing.T) {
	fstest.RequireFUSE(t)
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/a": "lower a", "d/b": "lower b", "d/sub/x": "x", "f": "f"})
	uniontest.Mount(t, l)
	m := l.Mount

	// Fill the caches.
	before := names(t, m+"/d")
	require.Equal(t, []string{"a", "b", "sub"}, before)
	st := lstat(t, m+"/d/a")
	_, err := os.Lstat(m + "/d/new")
	require.True(t, os.IsNotExist(err))

	// A hard link shows on the old name's link count.
	require.NoError(t, os.Link(m+"/d/a", m+"/d/link"))
	assert.Equal(t, uint64(2), uint64(lstat(t, m+"/d/a").Nlink))
	// A write through another descriptor shows in the size.
	require.NoError(t, os.WriteFile(m+"/d/link", []byte("longer content"), 0o644))
	assert.Equal(t, int64(len("longer content")), lstat(t, m+"/d/a").Size)
	assert.Equal(t, st.Ino, lstat(t, m+"/d/a").Ino, "copy-up keeps the inode")
	// fchmod through a descriptor shows on the name.
	f, err := os.Open(m + "/d/b")
	require.NoError(t, err)
	require.NoError(t, unix.Fchmod(int(f.Fd()), 0o600))
	f.Close()
	assert.Equal(t, uint32(0o600), lstat(t, m+"/d/b").Mode&0o777)
	// A cached negative entry goes when the name is made.
	require.NoError(t, os.WriteFile(m+"/d/new", []byte("n"), 0o644))
	assert.Equal(t, "n", readFile(t, m+"/d/new"))
	// Renames and removals show in lookups and in the cached listing.
	require.NoError(t, os.Rename(m+"/d/b", m+"/d/a"))
	assert.Equal(t, "lower b", readFile(t, m+"/d/a"))
	require.NoError(t, os.RemoveAll(m+"/d/sub"))
	_, err = os.Lstat(m + "/d/sub/x")
	assert.True(t, os.IsNotExist(err))
	require.NoError(t, os.Mkdir(m+"/d/sub", 0o755))
	assert.Empty(t, names(t, m+"/d/sub"), "a directory made over a removed one is empty")
	assert.Equal(t, []string{"a", "link", "new", "sub"}, names(t, m+"/d"))
	// A directory renamed keeps its children reachable by the new name only.
	require.NoError(t, os.Rename(m+"/d", m+"/e"))
	assert.Equal(t, "n", readFile(t, m+"/e/new"))
	_, err = os.Lstat(m + "/d/new")
	assert.True(t, os.IsNotExist(err))
	assert.Equal(t, []string{"e", "f"}, names(t, m))
}

// Daemon-served opens keep the kernel's page cache of a file across
// opens. A passthrough writer changes the data behind that cache, so the
// next daemon-served open must not read the pages cached before it.
func TestKeptPageCacheNeverServesStaleData(t *testing.T) {
	fstest.RequireFUSE(t)
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": "old data 1234", "g": "lower g"})
	m := uniontest.Mount(t, l)
	f := l.Mount + "/f"

	// Cache the lower data through a daemon-served open.
	require.Equal(t, "old data 1234", readFile(t, f))
	// Copy up and write in place (through passthrough where the kernel
	// offers it), then put the times back as they were, as a write within
	// one timestamp tick would leave them. (The kernel's auto_inval_data
	// still sees the change here, from the attributes it fetched after
	// the write, so this checks the outcome, not openedFile's own flag.)
	before := lstat(t, f)
	w, err := os.OpenFile(f, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("NEW"), 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, unix.UtimesNano(f, []unix.Timespec{before.Atim, before.Mtim}))
	// A set-uid bit makes the next writable open daemon-served (its
	// writes must clear the bit), so it reads through the page cache.
	require.NoError(t, os.Chmod(f, 0o4755))
	rw, err := os.OpenFile(f, os.O_RDWR, 0)
	require.NoError(t, err)
	buf := make([]byte, 64)
	n, err := rw.ReadAt(buf, 0)
	require.ErrorIs(t, err, io.EOF)
	assert.Equal(t, "NEW data 1234", string(buf[:n]), "passthrough=%v", m.FS.Passthrough())
	require.NoError(t, rw.Close())
	assert.Equal(t, "NEW data 1234", readFile(t, f))

	// O_DIRECT reads of a lower file served by the daemon come from the
	// host's cache and return the file's data, whatever the buffer's
	// alignment. (Through passthrough the kernel applies O_DIRECT to the
	// lower file itself and wants aligned buffers, as kernel overlay
	// does: TestReadsPastTheEndComeBackShort checks those.)
	if m.FS.Mode().LowerPassthrough {
		return
	}
	d, err := os.OpenFile(l.Mount+"/g", os.O_RDONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer d.Close()
	page := make([]byte, 8192)
	n, err = d.ReadAt(page[1:4097], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("O_DIRECT read: %v", err)
	}
	assert.Equal(t, "lower g", string(page[1:1+n]))
}
