package unionfs_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
)

// TestInAUserNamespace reruns the behaviour table and the random
// comparison with kernel overlay, in every whiteout format, as root of a
// user namespace whose ids are host ids 100000 and up, as a rootless
// container runs: there trusted xattrs cannot be written and whatever
// the namespace cannot map shows as the overflow id.
func TestInAUserNamespace(t *testing.T) {
	if fstest.InUserNamespace() {
		t.Skip("already inside a user namespace")
	}
	fstest.RequireFUSE(t)
	fstest.RequireKernelOverlay(t)
	cmd := fstest.UserNamespaceCommand(t, os.Args[0], "-test.run",
		"^(TestBehaviourTable|TestRandomOperationsMatchKernelOverlay)$", "-test.count=1", "-test.v", "-rapid.checks=40")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "inside the user namespace:\n%s", tail(out, 8000))
	// Nothing may have been skipped for want of root, FUSE or kernel
	// overlay: only the checks kernel overlay itself fails there.
	skips := regexp.MustCompile(`(?m)^\s*--- SKIP: (\S+)`).FindAllStringSubmatch(string(out), -1)
	for _, s := range skips {
		assert.Regexp(t, `/kernel_overlay$`, s[1], "skipped in the user namespace")
	}
	assert.LessOrEqual(t, len(skips), 3, "kernel overlay checks skipped in the user namespace")
	for _, name := range []string{"TestBehaviourTable", "TestRandomOperationsMatchKernelOverlay/whiteout=chardev",
		"TestRandomOperationsMatchKernelOverlay/whiteout=xattr", "TestRandomOperationsMatchKernelOverlay/whiteout=aufs", "TestRandomOperationsMatchKernelOverlay/metacopy=on"} {
		assert.Contains(t, string(out), "--- PASS: "+name+" ", "%s did not pass in the user namespace", name)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
