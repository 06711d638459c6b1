package sysx

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestCopySparseKeepsDataAndHoles(t *testing.T) {
	dir := t.TempDir()
	src, err := os.Create(filepath.Join(dir, "src"))
	require.NoError(t, err)
	defer src.Close()
	// data, 4 MiB hole, data, then a trailing 4 MiB hole
	_, err = src.WriteAt(bytes.Repeat([]byte("a"), 5000), 0)
	require.NoError(t, err)
	_, err = src.WriteAt(bytes.Repeat([]byte("b"), 5000), 4<<20)
	require.NoError(t, err)
	size := int64(12 << 20)
	require.NoError(t, src.Truncate(size))

	dst, err := os.Create(filepath.Join(dir, "dst"))
	require.NoError(t, err)
	defer dst.Close()
	require.NoError(t, CopySparse(int(dst.Fd()), int(src.Fd()), size))

	want, err := os.ReadFile(src.Name())
	require.NoError(t, err)
	got, err := os.ReadFile(dst.Name())
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, got), "same content")
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(int(dst.Fd()), &st))
	assert.Equal(t, size, st.Size)
	assert.Less(t, st.Blocks*512, int64(1<<20), "holes kept: %d bytes allocated", st.Blocks*512)
	hole, err := unix.Seek(int(dst.Fd()), 0, unix.SEEK_HOLE)
	require.NoError(t, err)
	assert.Less(t, hole, int64(4<<20), "a hole follows the first extent")
}

func TestOpenInRootCannotEscapeThroughSymlinks(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	require.NoError(t, os.Mkdir(root, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "secret"), []byte("outside"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "secret"), []byte("inside"), 0o644))
	require.NoError(t, os.Symlink("../secret", filepath.Join(root, "up")))
	require.NoError(t, os.Symlink("/secret", filepath.Join(root, "abs")))
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer unix.Close(rfd)
	for _, name := range []string{"up", "abs", "../secret"} {
		fd, err := OpenInRoot(rfd, name, unix.O_RDONLY, 0)
		require.NoError(t, err, name)
		buf := make([]byte, 16)
		n, _ := unix.Read(fd, buf)
		unix.Close(fd)
		assert.Equal(t, "inside", string(buf[:n]), "%s resolves inside the root", name)
	}
}
