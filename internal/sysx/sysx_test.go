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

// Xattr calls under a root fd act on the named entry itself, never on
// what a symlink there points to, for one component and for longer
// paths alike.
func TestXattrCallsNeverFollowASymlinkOutOfTheRoot(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "target")
	require.NoError(t, os.WriteFile(outside, nil, 0o644))
	if err := unix.Setxattr(outside, "user.probe", []byte("1"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	require.NoError(t, unix.Removexattr(outside, "user.probe"))
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "link")))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "sub", "link")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sub", "file"), nil, 0o644))
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer unix.Close(root)

	for _, path := range []string{"link", "sub/link"} {
		// Linux refuses user xattrs on symlinks; on the target it
		// would have succeeded.
		assert.Error(t, Setxattr(root, path, "user.x", []byte("v"), 0), path)
		_, err := Getxattr(root, path, "user.x")
		assert.Error(t, err, path)
		assert.False(t, HasAnyXattr(root, path, "user.x"), path)
	}
	_, err = unix.Getxattr(outside, "user.x", nil)
	assert.Equal(t, unix.ENODATA, err, "the target outside the root is untouched")

	require.NoError(t, Setxattr(root, "sub/file", "user.x", []byte("v"), 0))
	v, err := Getxattr(root, "sub/file", "user.x")
	require.NoError(t, err)
	assert.Equal(t, "v", string(v))
	names, err := Listxattr(root, "sub/file")
	require.NoError(t, err)
	assert.Contains(t, names, "user.x")
	require.NoError(t, Removexattr(root, "sub/file", "user.x"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "top"), nil, 0o644))
	require.NoError(t, Setxattr(root, "top", "user.y", []byte("w"), 0))
	v, err = Getxattr(root, "top", "user.y")
	require.NoError(t, err)
	assert.Equal(t, "w", string(v))
	require.NoError(t, Removexattr(root, "top", "user.y"))
	assert.False(t, HasAnyXattr(root, "top", "user.y"))
}

// RemoveAllAt takes a tree away under its root and never reaches through
// a symlink: what the link points at stays.
func TestRemoveAllAtStaysUnderItsRoot(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	require.NoError(t, os.WriteFile(outside+"/keep", []byte("k"), 0o644))
	require.NoError(t, os.MkdirAll(root+"/tree/sub", 0o755))
	require.NoError(t, os.WriteFile(root+"/tree/sub/f", []byte("f"), 0o644))
	require.NoError(t, os.Symlink(outside, root+"/tree/link"))
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	names, err := ReadNames(fd, "tree")
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"sub", "link"}, names)
	require.NoError(t, RemoveAllAt(fd, "/tree"))
	_, err = os.Lstat(root + "/tree")
	assert.True(t, os.IsNotExist(err), "the tree is gone")
	assert.FileExists(t, outside+"/keep", "nothing outside the root is touched")
	assert.NoError(t, RemoveAllAt(fd, "tree"), "removing what is not there is no error")
}
