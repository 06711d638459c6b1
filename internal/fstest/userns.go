package fstest

import (
	"os/exec"
	"testing"

	"github.com/unionmount/unionmount/internal/userns"
)

// NamespaceIDBase is where the ids of a test user namespace start on the
// host: container id 0 is host id NamespaceIDBase, as a rootless
// container's subordinate ids are.
const NamespaceIDBase = userns.IDBase

// InUserNamespace reports whether this process runs in a user namespace
// other than the initial one.
func InUserNamespace() bool { return userns.Inside() }

// UserNamespaceCommand returns a command that runs bin with args as root
// of a new user namespace (with its own mount namespace) whose ids 0..65535
// are host ids NamespaceIDBase.., as a rootless container runs. It skips
// the test where user namespaces or the privilege to map ids are missing.
func UserNamespaceCommand(t testing.TB, bin string, args ...string) *exec.Cmd {
	t.Helper()
	dir, copies := prepareNamespaceRun(t, bin)
	return userns.Command(dir, `exec "$@"`, append([]string{copies[0]}, args...)...)
}

// UserNamespaceScript is UserNamespaceCommand for a shell script; the
// programs in bins are copied where the namespace can run them and the
// script finds them as $BIN0, $BIN1... Its working directory is a fresh
// directory the namespace owns nothing of.
func UserNamespaceScript(t testing.TB, script string, bins ...string) *exec.Cmd {
	t.Helper()
	dir, copies := prepareNamespaceRun(t, bins...)
	cmd := userns.Command(dir, script)
	for i, c := range copies {
		cmd.Env = append(cmd.Env, "BIN"+string(rune('0'+i))+"="+c)
	}
	return cmd
}

func prepareNamespaceRun(t testing.TB, bins ...string) (dir string, copies []string) {
	t.Helper()
	RequireRoot(t)
	if err := userns.Available(); err != nil {
		t.Skip(err)
	}
	dir = t.TempDir()
	copies, err := userns.Prepare(dir, bins...)
	if err != nil {
		t.Fatal(err)
	}
	return dir, copies
}
