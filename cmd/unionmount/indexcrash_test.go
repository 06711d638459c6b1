package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// TestCrashDuringIndexedCopyUpLeavesTheGroupWhole kills the server at
// each crash point of the first copy-up of a lower hard link with
// index=on (data copied; linked into the index; linked to its name) and
// remounts: both names still read one file with the lower data, the
// lower's number and the lower's link count, the work dir is cleared,
// the group still works, and kernel overlay with index=on reads the
// layers the same.
func TestCrashDuringIndexedCopyUpLeavesTheGroupWhole(t *testing.T) {
	fstest.RequireFUSE(t)
	fstest.RequireRoot(t) // trusted.* xattrs
	bin := binary(t)
	for _, point := range unionfs.CrashPoints() {
		t.Run(point, func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": "lower data", "d/g": fstest.HardLink("f")})
			var lst unix.Stat_t
			require.NoError(t, unix.Lstat(filepath.Join(l.Lowers[0], "f"), &lst))
			opts := "lower=" + l.Lowers[0] + ",upper=" + l.Upper + ",work=" + l.Work + ",index=on"
			cmd := exec.Command(bin, "-f", "-o", opts, l.Mount)
			cmd.Env = append(os.Environ(), "UNIONMOUNT_CRASH_AT="+point)
			require.NoError(t, cmd.Start())
			require.True(t, fstest.WaitFor(fstest.Patience, func() bool { return mounted(l.Mount) }), "mounted")
			stop, aborted := fstest.AbortAfter(l.Mount, fstest.Patience)
			if f, err := os.OpenFile(l.Mount+"/f", os.O_WRONLY|os.O_APPEND, 0); err == nil {
				f.WriteString(" appended")
				f.Close()
			}
			err := cmd.Wait()
			stop()
			require.False(t, aborted(), "the crashed server did not go away")
			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "server crashed: %v", err)
			assert.Equal(t, 86, exit.ExitCode(), "stopped at the crash point")
			require.NoError(t, unix.Unmount(l.Mount, unix.MNT_DETACH))

			check := func(who string) {
				t.Helper()
				for _, n := range []string{"f", "d/g"} {
					var st unix.Stat_t
					require.NoError(t, unix.Lstat(filepath.Join(l.Mount, n), &st), "%s: %s", who, n)
					assert.Equal(t, lst.Ino, st.Ino, "%s: %s has the lower's number", who, n)
					assert.Equal(t, uint64(2), st.Nlink, "%s: %s has the lower's count", who, n)
					data, err := os.ReadFile(filepath.Join(l.Mount, n))
					require.NoError(t, err)
					assert.Equal(t, "lower data", string(data), "%s: %s", who, n)
				}
			}
			m, err := uniontest.Start(l, "index=on")
			require.NoError(t, err)
			check("unionmount after the crash")
			left, err := os.ReadDir(filepath.Join(l.Work, "work"))
			require.NoError(t, err)
			assert.Empty(t, left, "remount cleared the work dir")
			require.NoError(t, m.Unmount())
			if fstest.InUserNamespace() {
				return
			}
			unmount, err := fstest.StartKernelOverlay(l, "redirect_dir=on", "metacopy=off", "index=on")
			require.NoError(t, err)
			check("kernel overlay after the crash")
			require.NoError(t, unmount())

			m, err = uniontest.Start(l, "index=on")
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(l.Mount+"/d/g", []byte("new"), 0o644))
			data, err := os.ReadFile(l.Mount + "/f")
			require.NoError(t, err)
			assert.Equal(t, "new", string(data), "the group is still one file")
			require.NoError(t, m.Unmount())
		})
	}
}
