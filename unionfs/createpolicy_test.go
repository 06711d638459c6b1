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
)

// create=tdp, the default: new names go to the topmost writable branch
// that holds the parent dir.
func TestAufsCreateTDP(t *testing.T) {
	d, mnt := branchDirs(t, "a", "b")
	require.NoError(t, os.MkdirAll(filepath.Join(d["b"], "only-b"), 0o755))
	uniontest.MountAt(t, mnt, "br="+d["a"]+"=rw:"+d["b"]+"=rw")
	for i, name := range []string{"1", "2", "3"} {
		write(t, filepath.Join(mnt, name), name)
		assert.FileExists(t, filepath.Join(d["a"], name), "file %d", i)
	}
	write(t, filepath.Join(mnt, "only-b/f"), "f")
	assert.FileExists(t, filepath.Join(d["b"], "only-b/f"))
	assert.NoDirExists(t, filepath.Join(d["a"], "only-b"))
}

// create=rr takes the writable branches in turn, copying the parent dir
// to the chosen branch when it lacks it.
func TestAufsCreateRoundRobin(t *testing.T) {
	d, mnt := branchDirs(t, "a", "ro", "b")
	require.NoError(t, os.MkdirAll(filepath.Join(d["b"], "only-b"), 0o750))
	uniontest.MountAt(t, mnt, "br="+d["a"]+"=rw:"+d["ro"]+"=ro:"+d["b"]+"=rw,create=rr")
	on := map[string]int{}
	for _, name := range []string{"1", "2", "3", "4"} {
		write(t, filepath.Join(mnt, "only-b", name), name)
		for _, b := range []string{"a", "b"} {
			if _, err := os.Stat(filepath.Join(d[b], "only-b", name)); err == nil {
				on[b]++
			}
		}
	}
	assert.Equal(t, map[string]int{"a": 2, "b": 2}, on, "two files on each writable branch")
	st, err := os.Stat(filepath.Join(d["a"], "only-b"))
	require.NoError(t, err, "the parent was copied to a")
	assert.Equal(t, os.FileMode(0o750), st.Mode().Perm())
	assert.Equal(t, []string{"1", "2", "3", "4"}, listNames(t, filepath.Join(mnt, "only-b")))
}

// create=mfs picks the writable branch with the most free space: here
// the lower one, as the top one is a 1 MiB tmpfs.
func TestAufsCreateMostFreeSpace(t *testing.T) {
	fstest.RequireRoot(t)
	d, mnt := branchDirs(t, "small", "big")
	if err := unix.Mount("tmpfs", d["small"], "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(d["small"], unix.MNT_DETACH) })
	var big unix.Statfs_t
	require.NoError(t, unix.Statfs(d["big"], &big))
	if big.Bavail*uint64(big.Bsize) < 2<<20 {
		t.Skip("the test dir's filesystem has less than 2 MiB free")
	}
	uniontest.MountAt(t, mnt, "br="+d["small"]+"=rw:"+d["big"]+"=rw,create=mfs")
	write(t, filepath.Join(mnt, "f"), "f")
	assert.FileExists(t, filepath.Join(d["big"], "f"))
	assert.NoFileExists(t, filepath.Join(d["small"], "f"))
}
