package fstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// NamespaceIDBase is where the ids of a test user namespace start on the
// host: container id 0 is host id NamespaceIDBase, as a rootless
// container's subordinate ids are.
const NamespaceIDBase = 100000

// namespaceIDCount is how many ids a test user namespace maps; 65534,
// the overflow id, is among them.
const namespaceIDCount = 65536

// InUserNamespace reports whether this process runs in a user namespace
// other than the initial one.
func InUserNamespace() bool {
	data, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data))
	return !(len(fields) == 3 && fields[0] == "0" && fields[1] == "0" && fields[2] == "4294967295")
}

// UserNamespaceCommand returns a command that runs bin with args as root
// of a new user namespace (with its own mount namespace) whose ids 0..65535
// are host ids NamespaceIDBase.., as a rootless container runs. It skips
// the test where user namespaces or the privilege to map ids are missing.
func UserNamespaceCommand(t testing.TB, bin string, args ...string) *exec.Cmd {
	t.Helper()
	dir, copies := prepareNamespaceRun(t, bin)
	return namespaceShell(dir, `exec "$@"`, append([]string{copies[0]}, args...)...)
}

// UserNamespaceScript is UserNamespaceCommand for a shell script; the
// programs in bins are copied where the namespace can run them and the
// script finds them as $BIN0, $BIN1... Its working directory is a fresh
// directory the namespace owns nothing of.
func UserNamespaceScript(t testing.TB, script string, bins ...string) *exec.Cmd {
	t.Helper()
	dir, copies := prepareNamespaceRun(t, bins...)
	cmd := namespaceShell(dir, script)
	for i, c := range copies {
		cmd.Env = append(cmd.Env, "BIN"+string(rune('0'+i))+"="+c)
	}
	return cmd
}

// prepareNamespaceRun makes a directory the namespace can read, with
// copies of bins (mapped root has no power over host-owned files, so it
// may not reach the originals) and a FUSE device node anyone may open.
func prepareNamespaceRun(t testing.TB, bins ...string) (dir string, copies []string) {
	t.Helper()
	RequireRoot(t)
	if data, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(data)) == "0" {
		t.Skip("user namespaces are disabled (user.max_user_namespaces=0)")
	}
	probe := exec.Command("/bin/true")
	probe.SysProcAttr = userNamespaceAttr()
	if err := probe.Run(); err != nil {
		t.Skipf("cannot start a process in a new user namespace here: %v", err)
	}
	dir = t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, bin := range bins {
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		c := filepath.Join(dir, filepath.Base(bin))
		if err := os.WriteFile(c, data, 0o755); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, c)
	}
	// Mapped root cannot open the host's /dev/fuse where only host root
	// may (mode 0600 on some machines): a copy of the node anyone may
	// open is bound over it inside the namespace, as rootless hosts have
	// /dev/fuse.
	fuseDev := filepath.Join(dir, "fuse")
	if err := unix.Mknod(fuseDev, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 229))); err != nil {
		t.Fatalf("make a FUSE device node: %v", err)
	}
	if err := os.Chmod(fuseDev, 0o666); err != nil {
		t.Fatal(err)
	}
	return dir, copies
}

func namespaceShell(dir, script string, args ...string) *exec.Cmd {
	wrapped := `mount --bind "$FUSE_DEV" /dev/fuse || exit 1
` + script
	cmd := exec.Command("/bin/sh", append([]string{"-c", wrapped, "sh"}, args...)...)
	cmd.Dir = dir
	cmd.SysProcAttr = userNamespaceAttr()
	cmd.Env = append(os.Environ(), "HOME="+dir, "TMPDIR=/tmp", "FUSE_DEV="+filepath.Join(dir, "fuse"))
	return cmd
}

func userNamespaceAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: NamespaceIDBase, Size: namespaceIDCount}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: NamespaceIDBase, Size: namespaceIDCount}},
		Credential:  &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
		// Tests switch users inside (setpriv --clear-groups).
		GidMappingsEnableSetgroups: true,
	}
}
