package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
)

// make demo is the front door: it runs here as a newcomer runs it, and
// each part of the stack it shows must have done what it says.
func TestDemoWalksTheWholeStack(t *testing.T) {
	fstest.RequireFUSE(t)
	fstest.RequireRoot(t)
	for _, tool := range []string{"losetup", "mkfs.ext4", "fstrim", "nbdinfo", "getfattr"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the demo needs %s (make demo installs it)", tool)
		}
	}
	um, tb := os.Getenv("UNIONMOUNT_BIN"), os.Getenv("THINBLOCK_BIN")
	if um == "" || tb == "" || filepath.Dir(um) != filepath.Dir(tb) {
		t.Skip("needs UNIONMOUNT_BIN and THINBLOCK_BIN side by side (make test sets them)")
	}
	out, err := exec.Command("../../scripts/demo.sh", filepath.Dir(um)).CombinedOutput()
	require.NoError(t, err, "%s", out)
	text := string(out)
	for _, want := range []string{
		"hello from merged/usr/local/bin/greet", // a program ran from the mount
		"c--------- 1 root root 0, 0",           // a whiteout device in upper
		`trusted.overlay.opaque="y"`,            // an opaque dir
		".wh.app.conf",                          // an aufs whiteout
		"metadata is consistent",                // the pool checks out
		"demo done",
	} {
		assert.Contains(t, text, want)
	}
	// Space comes back: the pool's used blocks after the discard are
	// well below those before it (a 32 MiB file was removed).
	used := regexp.MustCompile(`(?m)^data:\s+(\d+)/\d+ blocks used`).FindAllStringSubmatch(text, -1)
	require.Len(t, used, 2, "two pool status reports")
	before, _ := strconv.Atoi(used[0][1])
	after, _ := strconv.Atoi(used[1][1])
	assert.Less(t, after, before-400, "blocks used before %d, after discard %d", before, after)
}
