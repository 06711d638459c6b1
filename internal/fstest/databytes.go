package fstest

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// DataBytes returns how many bytes of the file at path hold data rather
// than holes, as SEEK_DATA and SEEK_HOLE find them: what a test of space
// given back to the host means. st_blocks would count ext4's extent-tree
// blocks too, and a file punched full of holes may need one more of
// those (4 KiB more after a trim than before, once in make test).
func DataBytes(t testing.TB, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	fd := int(f.Fd())
	var total, off int64
	for {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			return total // no data from off to the end
		}
		require.NoError(t, err)
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		require.NoError(t, err)
		total += end - start
		off = end
	}
}
