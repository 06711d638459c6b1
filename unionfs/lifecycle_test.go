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

// When the kernel ends the connection (the union is unmounted), the
// server has closed its layer and work dirs by the time it has let go
// of the connection, before the daemon's own clean-up: a script that
// unmounts the layers' filesystem right after the union (as the overlay
// test suite does) finds it free. (Files whose RELEASE the kernel had
// not yet sent stay open until the daemon exits; they are not counted.)
func TestTheLayersAreClosedWhenTheConnectionEnds(t *testing.T) {
	fstest.RequireRoot(t)
	l := fstest.NewLayers(t, 2)
	fstest.WriteTree(t, l.Lowers[1], fstest.Spec{"d/f": "lower"})
	m, err := uniontest.Start(l, "passthrough=off")
	require.NoError(t, err)
	data, err := os.ReadFile(filepath.Join(l.Mount, "d/f"))
	require.NoError(t, err)
	assert.Equal(t, "lower", string(data))
	require.NoError(t, os.WriteFile(filepath.Join(l.Mount, "d/g"), []byte("upper"), 0o644))
	dirs := append([]string{l.Upper, l.Work, filepath.Join(l.Work, "work")}, l.Lowers...)
	require.NotEmpty(t, fdsOn(t, dirs), "the layers are open while the union serves")

	require.NoError(t, unix.Unmount(l.Mount, 0))
	m.Wait()
	assert.Empty(t, fdsOn(t, dirs), "layer dirs still open once the connection has ended")
	assert.NoError(t, m.Unmount())
}

// fdsOn lists this process's descriptors open on one of dirs.
func fdsOn(t *testing.T, dirs []string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	var open []string
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // closed since the listing
		}
		for _, d := range dirs {
			if target == d {
				open = append(open, e.Name()+" -> "+target)
			}
		}
	}
	return open
}
