package main

import (
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
ls -a test1 test2 .
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
	assert.NotContains(t, s, "unionmount-work", "nothing left beside the branch")
	b, err := os.ReadFile(filepath.Join(root, "test1/file2"))
	require.NoError(t, err)
	assert.Equal(t, "file1\n", string(b))
}
