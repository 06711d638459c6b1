package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/internal/mountstate"
)

// statusOf runs `unionmount status --json` and returns the entry for
// mountpoint, if listed.
func statusOf(t *testing.T, bin, mountpoint string) (mountstate.Mount, bool) {
	t.Helper()
	out, err := exec.Command(bin, "status", "--json").Output()
	require.NoError(t, err)
	var mounts []mountstate.Mount
	require.NoError(t, json.Unmarshal(out, &mounts), "%s", out)
	for _, m := range mounts {
		if m.Mountpoint == mountpoint {
			return m, true
		}
	}
	return mountstate.Mount{}, false
}

func TestStatusShowsEachUnionWithItsLayersDaemonAndMode(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	a, b := layers(t), layers(t)
	out, err := exec.Command(bin, "-o", "lower="+a.Lowers[0]+",upper="+a.Upper+",work="+a.Work, a.Mount).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command("fusermount3", "-u", a.Mount).Run() })
	out, err = exec.Command(bin, "-o", "lowerdir="+b.Lowers[0]+",upperdir="+b.Upper+",workdir="+b.Work,
		"-o", "passthrough=off,whiteout=xattr", b.Mount).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command("fusermount3", "-u", b.Mount).Run() })

	ma, ok := statusOf(t, bin, a.Mount)
	require.True(t, ok, "first union listed")
	require.NotNil(t, ma.Record, "first union has its record: %s", ma.Note)
	assert.Equal(t, []string{a.Lowers[0]}, ma.Record.Lowers)
	assert.Equal(t, a.Upper, ma.Record.Upper)
	assert.Equal(t, a.Work, ma.Record.Work)
	exe, err := os.Readlink("/proc/" + strconv.Itoa(ma.Record.PID) + "/exe")
	require.NoError(t, err, "the daemon's pid is a running process")
	assert.True(t, strings.HasSuffix(exe, "unionmount"), "the pid is a unionmount: %s", exe)

	mb, ok := statusOf(t, bin, b.Mount)
	require.True(t, ok, "second union listed")
	require.NotNil(t, mb.Record)
	mode := mb.Record.Mode.(map[string]any)
	assert.Equal(t, false, mode["passthrough"])
	assert.Equal(t, true, mode["writeback"], "without passthrough the kernel caches writes")
	assert.Equal(t, "xattr", mode["whiteout"])
	assert.Equal(t, []string{"lowerdir=" + b.Lowers[0] + ",upperdir=" + b.Upper + ",workdir=" + b.Work, "passthrough=off,whiteout=xattr"}, mb.Record.Options)

	text, err := exec.Command(bin, "status").Output()
	require.NoError(t, err)
	assert.Contains(t, string(text), a.Mount+"\n")
	assert.Contains(t, string(text), "writeback cache, whiteout=xattr")

	// A daemon killed outright leaves its mount (dead) and its record;
	// status no longer claims the record.
	require.NoError(t, syscall.Kill(mb.Record.PID, syscall.SIGKILL))
	require.True(t, fstest.WaitFor(fstest.Patience, func() bool {
		return syscall.Kill(mb.Record.PID, 0) == syscall.ESRCH
	}))
	mb, ok = statusOf(t, bin, b.Mount)
	if ok { // the kernel may have dropped the dead connection's mount
		assert.Nil(t, mb.Record)
		assert.NotEmpty(t, mb.Note)
	}
	exec.Command("umount", "-l", b.Mount).Run()

	// A clean unmount takes the record with it.
	require.NoError(t, exec.Command("fusermount3", "-u", a.Mount).Run())
	waitUnmounted(t, a.Mount)
	require.True(t, fstest.WaitFor(fstest.Patience, func() bool {
		_, err := os.Stat(mountstate.Dir() + "/mount-" + strings.ReplaceAll(ma.Record.Device, ":", "-") + ".json")
		return os.IsNotExist(err)
	}), "record removed at unmount")
}

// A daemon in the background writes what it has to say to a log file
// that status names: a SIGTERM it cannot act on is reported there.
func TestBackgroundDaemonLogsWhereStatusSays(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	l := layers(t)
	out, err := exec.Command(bin, "-o", "lower="+l.Lowers[0]+",upper="+l.Upper+",work="+l.Work, l.Mount).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", l.Mount).Run()
		waitUnmounted(t, l.Mount)
	})
	m, ok := statusOf(t, bin, l.Mount)
	require.True(t, ok)
	require.NotNil(t, m.Record)
	require.NotEmpty(t, m.Record.Log, "status names the log")

	busy, err := os.Open(l.Mount + "/f") // an open file keeps the mount busy
	require.NoError(t, err)
	defer busy.Close()
	require.NoError(t, syscall.Kill(m.Record.PID, syscall.SIGTERM))
	assert.True(t, fstest.WaitFor(fstest.Patience, func() bool {
		data, _ := os.ReadFile(m.Record.Log)
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, "unionmount["+strconv.Itoa(m.Record.PID)+"]") && strings.Contains(line, "still serving") {
				return true
			}
		}
		return false
	}), "the refused SIGTERM is logged in %s", m.Record.Log)
}

func TestVersionNamesTheCommand(t *testing.T) {
	out, err := exec.Command(binary(t), "--version").Output()
	require.NoError(t, err)
	assert.Regexp(t, `^unionmount \S+ .*go1\.\d+`, string(out))
}

// A daemon whose mount was taken away in its own mount namespace while
// a copy lives on in another (a container's, say) ends on SIGTERM: no
// unmount can reach the copy from here.
func TestSIGTERMEndsADaemonWhoseMountLivesOnlyInAnotherNamespace(t *testing.T) {
	fstest.RequireFUSE(t)
	fstest.RequireRoot(t)
	bin := binary(t)
	l := layers(t)
	out, err := exec.Command(bin, "-o", "lower="+l.Lowers[0]+",upper="+l.Upper+",work="+l.Work, l.Mount).CombinedOutput()
	require.NoError(t, err, "%s", out)
	m, ok := statusOf(t, bin, l.Mount)
	require.True(t, ok)
	require.NotNil(t, m.Record)
	pid := m.Record.PID

	// Another mount namespace keeps a copy of every mount, ours too.
	// It lives until the cleanup kills it, however slow the steps below.
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "3600")
	require.NoError(t, holder.Start())
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	require.True(t, fstest.WaitFor(fstest.Patience, func() bool {
		data, _ := os.ReadFile("/proc/" + strconv.Itoa(holder.Process.Pid) + "/mountinfo")
		self, _ := os.Readlink("/proc/self/ns/mnt")
		ns, _ := os.Readlink("/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/mnt")
		return ns != self && strings.Contains(string(data), " "+l.Mount+" ")
	}), "the holder's namespace has a copy of the mount")
	require.NoError(t, exec.Command("umount", "-l", l.Mount).Run())

	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	assert.True(t, fstest.WaitFor(fstest.Patience, func() bool {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}), "the daemon ended")
	data, _ := os.ReadFile(m.Record.Log)
	assert.Contains(t, string(data), "no longer mounted in this mount namespace")
}
