package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
)

// aufsTutorial is the aufs tutorial's session, as a user types it, with
// mount -t fuse.unionmount where the tutorial has mount -t aufs. Each
// command is echoed, so the transcript reads as the README shows it.
const aufsTutorial = `set -v
mount --make-rprivate /
mount -t tmpfs bin /usr/local/sbin
ln -s "$BIN" /usr/local/sbin/unionmount
cd "$ROOT"
mkdir test1 test2 aufs
echo file1 > test1/file1
echo file2 > test2/file2
mount -t fuse.unionmount -o br=$ROOT/test1=ro:$ROOT/test2=rw none $ROOT/aufs
ls aufs
echo hello > aufs/file1 || echo "refused: $?"
echo hello > aufs/file2
cat test2/file2
mv test1/file1 test1/file2
cat aufs/file2
ls -a test2
ls
umount aufs
`

func TestAufsTutorialThroughMountHelper(t *testing.T) {
	fstest.RequireFUSE(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	bin := binary(t)
	root := t.TempDir()
	cmd := exec.Command("unshare", "-m", "bash", "-c", aufsTutorial)
	cmd.Env = append(os.Environ(), "BIN="+bin, "ROOT="+root)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Logf("transcript:\n%s", out)
	s := string(out)
	assert.Contains(t, s, "aufs/file1: Read-only file system")
	assert.Contains(t, s, "cat test2/file2\nhello\n", "file2 rewritten in place on test2")
	assert.Contains(t, s, "cat aufs/file2\nfile1\n", "the leftmost branch wins")
	assert.Contains(t, s, "ls -a test2\n.\n..\n.wh..wh.unionmount\nfile2\n")
	assert.Contains(t, s, "\nls\naufs\ntest1\ntest2\n", "nothing left beside the branches")
	b, err := os.ReadFile(filepath.Join(root, "test1/file2"))
	require.NoError(t, err)
	assert.Equal(t, "file1\n", string(b))
}

// Docker's aufs driver mounts the first layers with its mount data and
// appends the rest with remount,append:DIR=ro+wh; here `unionmount
// branch add` does the appending, through the daemon's control socket.
func TestAufsDockerLayersAddedLive(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	root := t.TempDir()
	const layers = 8 // more than the first batch of 3
	var dirs []string
	for i := 0; i < layers; i++ {
		dir := filepath.Join(root, "diff", fmt.Sprintf("layer%d", i))
		fstest.WriteTree(t, dir, fstest.Spec{fmt.Sprintf("usr/l%d", i): fmt.Sprintf("layer %d", i), "shared": fmt.Sprintf("from %d", i)})
		dirs = append(dirs, dir)
	}
	rw, mnt := filepath.Join(root, "diff", "rw"), filepath.Join(root, "mnt", "c")
	for _, d := range []string{rw, mnt} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	data := "br:" + rw + "=rw:" + dirs[0] + "=ro+wh:" + dirs[1] + "=ro+wh:" + dirs[2] + "=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1"
	out, err := exec.Command(bin, "-o", data, mnt).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command("fusermount3", "-u", mnt).Run() })

	names := func() []string {
		ents, err := os.ReadDir(filepath.Join(mnt, "usr"))
		require.NoError(t, err)
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	assert.Equal(t, []string{"l0", "l1", "l2"}, names())
	for _, d := range dirs[3:] {
		out, err := exec.Command(bin, "branch", "add", mnt, d+"=ro+wh").CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	assert.Equal(t, []string{"l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7"}, names())
	b, err := os.ReadFile(filepath.Join(mnt, "usr/l7"))
	require.NoError(t, err)
	assert.Equal(t, "layer 7", string(b))
	b, err = os.ReadFile(filepath.Join(mnt, "shared"))
	require.NoError(t, err)
	assert.Equal(t, "from 0", string(b), "the leftmost branch wins")

	out, err = exec.Command(bin, "branch", "list", mnt).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), dirs[7]+"=ro")

	// In use: refused with "busy", and nothing changes.
	f, err := os.Open(filepath.Join(mnt, "usr/l5"))
	require.NoError(t, err)
	out, err = exec.Command(bin, "branch", "del", mnt, dirs[5]).CombinedOutput()
	assert.Error(t, err)
	assert.Contains(t, string(out), "busy")
	require.NoError(t, f.Close())
	out, err = exec.Command(bin, "branch", "del", mnt, dirs[5]).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, []string{"l0", "l1", "l2", "l3", "l4", "l6", "l7"}, names())

	// Bad requests: a clear message, non-zero exit, nothing changed.
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"branch", "add", mnt, dirs[5] + "=rw"}, 1, "read-only"},
		{[]string{"branch", "add", mnt, dirs[5] + "=maybe"}, 2, `permission "maybe"`},
		{[]string{"branch", "del", mnt, root}, 1, "not a branch"},
		{[]string{"branch", "frob", mnt}, 2, "unknown operation"},
		{[]string{"branch", "add", "--prepend", mnt, dirs[5]}, 1, "stays on top"},
		{[]string{"branch", "del", "--prepend", mnt, dirs[5]}, 2, "--prepend goes with add"},
		{[]string{"branch", "add", root, dirs[5]}, 1, "no union is mounted"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%v: %s", c.args, out)
		assert.Equal(t, c.code, ee.ExitCode(), "%v: %s", c.args, out)
		assert.Contains(t, string(out), c.says, "%v", c.args)
	}
	assert.Equal(t, []string{"l0", "l1", "l2", "l3", "l4", "l6", "l7"}, names())

	// The status record names the control socket, mode 0600.
	out, err = exec.Command(bin, "status", "--json").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), `"control"`)
	control, err := controlOf(mnt)
	require.NoError(t, err)
	st, err := os.Stat(control)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.NotEqual(t, 0, st.Mode()&os.ModeSocket)
}
