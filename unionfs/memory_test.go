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
