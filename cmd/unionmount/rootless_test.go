package main

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

// The union works as mapped root in a new user namespace, where device
// nodes and trusted xattrs cannot be made: whiteouts fall back to the
// xattr format, markers to user.overlay.*.
func TestRunsInAUserNamespace(t *testing.T) {
	fstest.RequireFUSE(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	if out, err := exec.Command("unshare", "--user", "--map-root-user", "--mount", "true").CombinedOutput(); err != nil {
		t.Skipf("user namespaces are not available here: %v: %s", err, out)
	}
	bin := binary(t)
	l := layers(t)
	script := `set -e
"$BIN" -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK" "$MNT"
echo appended >> "$MNT/f"
rm "$MNT/d/g"
rm -r "$MNT/d" && mkdir "$MNT/d"
cat "$MNT/f"
ls -A "$MNT/d" | wc -l
umount "$MNT"
`
	cmd := exec.Command("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "BIN="+bin, "MNT="+l.Mount, "LOWER="+l.Lowers[0], "UPPER="+l.Upper, "WORK="+l.Work)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "lower dataappended\n0\n")
	// Markers land in user.overlay.*: trusted xattrs need privilege in
	// the initial namespace.
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(l.Upper+"/d", "user.overlay.opaque", buf)
	require.NoError(t, err, "opaque marker in user.overlay.*")
	assert.Equal(t, "y", string(buf[:n]))
}

// The union works for an ordinary user through fusermount3, with a
// private copy of /dev/fuse the user can open.
func TestRunsAsAnOrdinaryUser(t *testing.T) {
	fstest.RequireFUSE(t)
	for _, tool := range []string{"unshare", "setpriv", "useradd", "fusermount3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	const name = "unionmount-test"
	u, err := user.Lookup(name)
	if err != nil {
		if out, err := exec.Command("useradd", "--system", "--no-create-home", name).CombinedOutput(); err != nil {
			t.Skipf("cannot create a test user: %v: %s", err, out)
		}
		if u, err = user.Lookup(name); err != nil {
			t.Skipf("no test user: %v", err)
		}
	}
	bin := binary(t)
	root := t.TempDir()
	// The user must reach its layers: open t.TempDir's 0700 parent too.
	require.NoError(t, os.Chmod(filepath.Dir(root), 0o755))
	require.NoError(t, os.Chmod(root, 0o755))
	for _, d := range []string{"lower/d", "upper", "work", "mnt"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	fstest.WriteTree(t, filepath.Join(root, "lower"), fstest.Spec{"f": "lower data", "d/g": "g"})
	exec.Command("chown", "-R", u.Uid+":"+u.Gid, root).Run()
	binCopy := filepath.Join(root, "unionmount")
	data, err := os.ReadFile(bin)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(binCopy, data, 0o755))
	script := `set -e
cp -a /dev/fuse "$ROOT/fuse" && chmod 0666 "$ROOT/fuse" && mount --bind "$ROOT/fuse" /dev/fuse
setpriv --reuid="$UID_" --regid="$GID_" --clear-groups sh -c '
set -e
"$0" -o "lowerdir=$1/lower,upperdir=$1/upper,workdir=$1/work" "$1/mnt"
echo appended >> "$1/mnt/f"
rm "$1/mnt/d/g"
cat "$1/mnt/f"
ls -A "$1/mnt/d" | wc -l
fusermount3 -u "$1/mnt"
' "$BIN" "$ROOT"
`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "BIN="+binCopy, "ROOT="+root, "UID_="+u.Uid, "GID_="+u.Gid)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "lower dataappended\n0\n")
	assertWhiteout(t, filepath.Join(root, "upper/d/g"))
}

// assertWhiteout checks that path is a whiteout: a 0/0 device node
// (Linux 5.8+ lets unprivileged users make those) or, where refused, an
// empty file with the user.overlay.whiteout xattr.
func assertWhiteout(t *testing.T, path string) {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st), "a whiteout stands at %s", path)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		assert.Equal(t, uint64(0), st.Rdev)
	case unix.S_IFREG:
		assert.Equal(t, int64(0), st.Size)
		_, err := unix.Lgetxattr(path, "user.overlay.whiteout", nil)
		assert.NoError(t, err, "xattr whiteout marker")
	default:
		t.Errorf("%s is neither kind of whiteout (mode %o)", path, st.Mode)
	}
}

// In a user namespace whose ids are host ids 100000 and up (a rootless
// container's), a layer file owned by a host id the namespace does not
// map shows as the overflow id 65534, a mapped one as its namespace id;
// and uidmapping= shifts a layer kept with container ids (0, 1) to the
// ids the namespace shows, as podman passes it to its mount_program.
func TestIDsInAShiftedUserNamespace(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	l := layers(t)
	for _, d := range []string{l.Upper, l.Work, l.Mount} {
		require.NoError(t, os.Chown(d, fstest.NamespaceIDBase, fstest.NamespaceIDBase))
	}
	lower := l.Lowers[0]
	require.NoError(t, os.WriteFile(lower+"/hostroot", []byte("h"), 0o644))
	require.NoError(t, os.WriteFile(lower+"/mapped", []byte("m"), 0o644))
	require.NoError(t, os.Lchown(lower+"/mapped", fstest.NamespaceIDBase+5, fstest.NamespaceIDBase+5))
	script := `set -e
"$BIN0" -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK" "$MNT"
stat -c 'plain %n %u:%g' "$MNT/hostroot" "$MNT/mapped"
umount "$MNT"
"$BIN0" -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK,uidmapping=0:5:1:5:0:1,gidmapping=0:5:1:5:0:1" "$MNT"
stat -c 'shifted %n %u:%g' "$MNT/mapped"
umount "$MNT"
`
	cmd := fstest.UserNamespaceScript(t, script, bin)
	cmd.Env = append(cmd.Env, "MNT="+l.Mount, "LOWER="+lower, "UPPER="+l.Upper, "WORK="+l.Work)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "plain "+l.Mount+"/hostroot 65534:65534\n")
	assert.Contains(t, string(out), "plain "+l.Mount+"/mapped 5:5\n")
	assert.Contains(t, string(out), "shifted "+l.Mount+"/mapped 0:0\n")
}
