package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestAMountThatFellBackFromIOURingIsCaught mounts the union asking for
// io_uring while the kernel's switch is off: the mount serves over
// /dev/fuse, and the io_uring target's check refuses it, so its figures
// cannot stand in the io_uring column.
func TestAMountThatFellBackFromIOURingIsCaught(t *testing.T) {
	skipUnlessRootWithFUSE(t, "mounts the union as root")
	if data, err := os.ReadFile(uringParameter); err == nil && strings.TrimSpace(string(data)) == "Y" {
		t.Skip("FUSE-over-io_uring is on: a mount asking for it does not fall back")
	}
	bin := os.Getenv("UNIONMOUNT_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "unionmount")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/unionmount/unionmount/cmd/unionmount").CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	dir := t.TempDir()
	for _, d := range []string{"lower", "upper", "work", "mnt"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, d), 0o755))
	}
	mnt := filepath.Join(dir, "mnt")
	out, err := exec.Command(bin, "-o", "lowerdir="+dir+"/lower,upperdir="+dir+"/upper,workdir="+dir+"/work,transport=io_uring", mnt).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })

	err = checkTransport(bin, mnt, "io_uring")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "serves over dev-fuse, not io_uring")
	assert.NoError(t, checkTransport(bin, mnt, "dev-fuse"), "the transport it does serve over passes")
	assert.ErrorContains(t, checkTransport(bin, filepath.Join(dir, "lower"), "dev-fuse"), "does not list")
}

// skipUnlessRootWithFUSE skips a test that mounts as root, saying why
// it needs root, unless it runs as root with /dev/fuse.
func skipUnlessRootWithFUSE(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip(why)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}
