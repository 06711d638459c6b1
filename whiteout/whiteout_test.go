package whiteout

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func dirFd(t *testing.T, dir string) int {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestChardevWhiteoutRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a device node needs root")
	}
	dir := t.TempDir()
	fd := dirFd(t, dir)
	require.NoError(t, MakeWhiteout(fd, "gone"))
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(filepath.Join(dir, "gone"), &st))
	assert.True(t, IsChardevWhiteout(&st))
	assert.True(t, Markers{Prefix: TrustedPrefix}.IsWhiteout(fd, "gone", &st))

	require.NoError(t, os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644))
	require.NoError(t, unix.Lstat(filepath.Join(dir, "plain"), &st))
	assert.False(t, Markers{Prefix: TrustedPrefix}.IsWhiteout(fd, "plain", &st), "an empty file is no whiteout")
}

func TestMarkersInTheUserNamespaceAreReadInBothModes(t *testing.T) {
	dir := t.TempDir()
	fd := dirFd(t, dir)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	user := Markers{Prefix: UserPrefix}
	if err := user.SetOpaque(fd, "d"); err != nil {
		t.Skipf("user xattrs unsupported here: %v", err)
	}
	assert.True(t, user.IsOpaque(fd, "d"))
	assert.True(t, Markers{Prefix: TrustedPrefix}.IsOpaque(fd, "d"), "a trusted-mode mount reads user markers")
	require.NoError(t, user.SetRedirect(fd, "d", "/old/place"))
	r, ok := Markers{Prefix: TrustedPrefix}.Redirect(fd, "d")
	assert.True(t, ok)
	assert.Equal(t, "/old/place", r)
	require.NoError(t, user.ClearOpaque(fd, "d"))
	assert.False(t, user.IsOpaque(fd, "d"))
}

func TestOpaqueXMeansHoldsXattrWhiteoutsNotOpaque(t *testing.T) {
	dir := t.TempDir()
	fd := dirFd(t, dir)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	if err := unix.Setxattr(filepath.Join(dir, "d"), UserPrefix+"opaque", []byte("x"), 0); err != nil {
		t.Skipf("user xattrs unsupported here: %v", err)
	}
	assert.False(t, Markers{Prefix: UserPrefix}.IsOpaque(fd, "d"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "d/w"), nil, 0o644))
	require.NoError(t, unix.Setxattr(filepath.Join(dir, "d/w"), UserPrefix+"whiteout", nil, 0))
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(filepath.Join(dir, "d/w"), &st))
	assert.True(t, Markers{Prefix: UserPrefix}.IsWhiteout(fd, "d/w", &st))
}

func TestPrivateXattrs(t *testing.T) {
	assert.True(t, IsPrivateXattr("trusted.overlay.opaque"))
	assert.True(t, IsPrivateXattr("trusted.unionmount.id"))
	assert.False(t, IsPrivateXattr("user.overlay.opaque"), "user.* is private only in userxattr mode")
	assert.True(t, Markers{Prefix: UserPrefix}.IsPrivateXattrIn("user.overlay.opaque"))
	assert.False(t, Markers{Prefix: TrustedPrefix}.IsPrivateXattrIn("user.mine"))
}
