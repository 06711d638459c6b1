package unionfs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// Starting a program resolves the same symlinks every time (/lib64, the
// loader's, the libraries'): the kernel keeps their targets, so only the
// first resolution is a request. A symlink copied up keeps its target
// and its cached one with it.
func TestTheKernelKeepsSymlinkTargets(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	require.NoError(t, os.Symlink("usr/lib", filepath.Join(l.Lowers[0], "lib")))
	m := uniontest.Mount(t, l, "debug")
	link := filepath.Join(l.Mount, "lib")
	for i := 0; i < 5; i++ {
		target, err := os.Readlink(link)
		require.NoError(t, err)
		require.Equal(t, "usr/lib", target)
	}
	assert.Equal(t, 1, strings.Count(m.Logs(), ": READLINK "), "READLINK requests for five readlinks of one symlink")

	require.NoError(t, os.Lchown(link, 1, 1)) // copies it up
	target, err := os.Readlink(link)
	require.NoError(t, err)
	assert.Equal(t, "usr/lib", target)
	upper, err := os.Readlink(filepath.Join(l.Upper, "lib"))
	require.NoError(t, err)
	assert.Equal(t, "usr/lib", upper)

	// A new symlink in its place is a new inode: its target is asked for.
	require.NoError(t, os.Remove(link))
	require.NoError(t, os.Symlink("usr/lib64", link))
	target, err = os.Readlink(link)
	require.NoError(t, err)
	assert.Equal(t, "usr/lib64", target)
}
