package unionfs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// Reading a tree once through the union (as grep -r and tar do) leaves
// the kernel holding every inode for the cache timeout: what the daemon
// keeps per inode once its files are closed is paid per file of the
// tree, for every container. A node whose handles are all closed keeps
// no set of them.
func TestClosedFilesLeaveNothingPerNode(t *testing.T) {
	const files = 200
	l := fstest.NewLayers(t, 1)
	for i := 0; i < files; i++ {
		require.NoError(t, os.WriteFile(filepath.Join(l.Lowers[0], fmt.Sprintf("f%03d", i)), []byte("lower data"), 0o644))
	}
	m := uniontest.Mount(t, l, "passthrough=off")
	for i := 0; i < files; i++ {
		data, err := os.ReadFile(filepath.Join(l.Mount, fmt.Sprintf("f%03d", i)))
		require.NoError(t, err)
		require.Equal(t, "lower data", string(data))
	}
	// The kernel sends RELEASE after close returns: wait for the last.
	nodes, open, keeping := m.FS.NodesKeepingHandleSets()
	for deadline := time.Now().Add(5 * time.Second); open > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		nodes, open, keeping = m.FS.NodesKeepingHandleSets()
	}
	require.Zero(t, open, "files still open after every close")
	assert.GreaterOrEqual(t, nodes, files, "the kernel still knows the files read")
	assert.Zero(t, keeping, "nodes holding an empty set of handles")
}

// A walk of a tree (find, grep -r, tar) reads every directory to its
// end. The kernel then keeps the directories for the cache timeout but
// reads them from its own cache: the daemon keeps no listing for them.
func TestAWalkOfATreeKeepsNoDirectoryListings(t *testing.T) {
	const dirs, filesPerDir = 40, 30
	l := fstest.NewLayers(t, 1)
	for d := 0; d < dirs; d++ {
		dir := filepath.Join(l.Lowers[0], fmt.Sprintf("d%02d", d))
		require.NoError(t, os.Mkdir(dir, 0o755))
		for f := 0; f < filesPerDir; f++ {
			require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", f)), nil, 0o644))
		}
	}
	m := uniontest.Mount(t, l)
	if _, implicit := m.FS.HeldDirectoryHandles(); !implicit {
		t.Skip("the kernel opens directories before reading them (no FUSE_NO_OPENDIR_SUPPORT): handles end at close")
	}
	files := 0
	require.NoError(t, filepath.WalkDir(l.Mount, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files++
		}
		return err
	}))
	require.Equal(t, dirs*filesPerDir, files, "files the walk found")
	held, _ := m.FS.HeldDirectoryHandles()
	assert.Zero(t, held, "directory handles held after every directory was read to its end")
}
