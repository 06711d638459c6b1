package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTheFloorServesOverIOURingOrIsRefused runs the floor target's
// daemon as the machine stands: with FUSE-over-io_uring on, it serves
// its directory over rings and ends with its unmount; with it off,
// libfuse falls back to /dev/fuse, and the target refuses that mount
// and leaves none behind.
func TestTheFloorServesOverIOURingOrIsRefused(t *testing.T) {
	skipUnlessRootWithFUSE(t, "passthrough_hp's passthrough and io_uring need root")
	bin := os.Getenv("PASSTHROUGH_HP")
	if bin == "" {
		bin = DefaultPassthroughHP
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("libfuse's passthrough_hp is not built (scripts/build-passthrough-hp.sh): %v", err)
	}
	state, err := os.ReadFile(uringParameter)
	if err != nil {
		t.Skipf("the kernel has no FUSE-over-io_uring: %v", err)
	}
	src, mnt := t.TempDir(), t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "lower"), []byte("from the source"), 0o644))

	stop, err := startPassthroughHP(bin, src, mnt, 64)
	if strings.TrimSpace(string(state)) != "Y" {
		require.Error(t, err, "enable_uring is N: the daemon can only have fallen back to /dev/fuse")
		assert.Contains(t, err.Error(), "over /dev/fuse, not io_uring")
		assert.False(t, isFUSEMount(mnt), "the refused mount is gone")
		return
	}
	require.NoError(t, err)
	t.Cleanup(func() {
		if isFUSEMount(mnt) {
			stop()
		}
	})
	got, err := os.ReadFile(filepath.Join(mnt, "lower"))
	require.NoError(t, err)
	assert.Equal(t, "from the source", string(got))
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "written"), []byte("through the rings"), 0o644))
	got, err = os.ReadFile(filepath.Join(src, "written"))
	require.NoError(t, err)
	assert.Equal(t, "through the rings", string(got))

	require.NoError(t, stop(), "the daemon ends after its unmount")
	assert.False(t, isFUSEMount(mnt))
}
