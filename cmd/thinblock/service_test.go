package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
)

// --daemon returns once the sockets are there, with a pid file; SIGTERM
// to that pid stops it and removes both. A server that cannot start
// fails the command with its own error.
func TestServeAsADaemon(t *testing.T) {
	bin := thinblockBinary(t, "")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "64M")
	mustRun(t, "create", "--pool", dir, "1", "--size", "8M")
	pidFile := filepath.Join(dir, "serve.pid")
	cmd := exec.Command(bin, "serve", "nbd", "--pool", dir, "--daemon", "--pid-file", pidFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	go func() { done <- cmd.Run() }()
	select {
	case err := <-done:
		require.NoError(t, err, "%s", stderr.String())
	case <-time.After(patience):
		cmd.Process.Kill()
		t.Fatalf("--daemon did not return: %s", stderr.String())
	}
	// Ready means ready: no waiting for the sockets.
	assert.FileExists(t, filepath.Join(dir, "nbd.sock"))
	assert.FileExists(t, filepath.Join(dir, "control.sock"))
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	assert.NotEqual(t, cmd.Process.Pid, pid, "the server runs in a process of its own")
	mustRun(t, "create", "--pool", dir, "2", "--size", "8M")
	assert.Contains(t, mustRun(t, "ls", "--pool", dir), "8.0 MiB")

	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	require.True(t, fstest.WaitFor(patience, func() bool { return syscall.Kill(pid, 0) != nil }), "the server did not stop on SIGTERM")
	assert.NoFileExists(t, pidFile)
	assert.NoFileExists(t, filepath.Join(dir, "control.sock"))
	log, err := os.ReadFile(filepath.Join(dir, "serve.log"))
	require.NoError(t, err)
	assert.Contains(t, string(log), "terminated: finishing in-flight requests")
	assert.Contains(t, mustRun(t, "ls", "--pool", dir), "    2 ")

	// A pool that is not there: the command fails with the server's
	// error and status, and leaves no pid file.
	missing := filepath.Join(t.TempDir(), "nopool")
	out, err := exec.Command(bin, "serve", "nbd", "--pool", missing, "--daemon", "--pid-file", pidFile).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	assert.Equal(t, 2, ee.ExitCode(), "%s", out)
	assert.Contains(t, string(out), "no such file or directory")
	assert.NoFileExists(t, pidFile)
}

// Under systemd (Type=notify) the server says READY=1 once its sockets
// exist.
func TestServeNotifiesSystemdWhenReady(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "64M")
	notify := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	cmd := exec.Command(thinblockBinary(t, ""), "serve", "nbd", "--pool", dir)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	conn.SetReadDeadline(time.Now().Add(patience))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	require.NoError(t, err, "no notification: %s", stderr.String())
	assert.Contains(t, string(buf[:n]), "READY=1")
	assert.Contains(t, string(buf[:n]), "MAINPID="+strconv.Itoa(cmd.Process.Pid))
	assert.FileExists(t, filepath.Join(dir, "nbd.sock"))
	assert.FileExists(t, filepath.Join(dir, "control.sock"))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait(), "%s", stderr.String())
}

// The shipped unit file parses: systemd-analyze verify where present
// (with ExecStart pointing at the binary under test), else its keys.
func TestSystemdUnitFile(t *testing.T) {
	unit, err := os.ReadFile("../../contrib/systemd/thinblock@.service")
	require.NoError(t, err)
	text := string(unit)
	for _, key := range []string{"[Unit]", "[Service]", "[Install]", "Type=notify", "ExecStart=/usr/local/sbin/thinblock serve nbd --pool /var/lib/thinblock/%i", "KillSignal=SIGTERM"} {
		assert.Contains(t, text, key)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed: checked the keys only")
	}
	dir := t.TempDir()
	text = strings.ReplaceAll(text, "/usr/local/sbin/thinblock", thinblockBinary(t, ""))
	path := filepath.Join(dir, "thinblock@test.service")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	// verify also reports on unrelated units of a machine without a
	// running systemd; only lines naming ours count.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "thinblock@test.service") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil && !strings.Contains(string(out), "thinblock@test") {
		t.Logf("systemd-analyze verify exited %v (nothing about our unit):\n%s", err, out)
	}
}

// serve fuse --daemon returns once the volume files are there.
func TestServeFUSEAsADaemon(t *testing.T) {
	requireRootFUSE(t)
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "64M")
	mustRun(t, "create", "--pool", dir, "7", "--size", "8M")
	mnt := filepath.Join(t.TempDir(), "volumes")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	pidFile := filepath.Join(dir, "fuse.pid")
	out, err := exec.Command(thinblockBinary(t, ""), "serve", "fuse", "--pool", dir, mnt, "--daemon", "--pid-file", pidFile).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { syscall.Unmount(mnt, 2 /* MNT_DETACH */) })
	st, err := os.Stat(filepath.Join(mnt, "7"))
	require.NoError(t, err, "the volume file is there when --daemon returns")
	assert.Equal(t, int64(8<<20), st.Size())
	assert.FileExists(t, filepath.Join(dir, "control.sock"))
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	require.True(t, fstest.WaitFor(patience, func() bool { return syscall.Kill(pid, 0) != nil }), "the server did not stop on SIGTERM")
	_, err = os.Stat(filepath.Join(mnt, "7"))
	assert.True(t, os.IsNotExist(err), "unmounted: %v", err)
	assert.NoFileExists(t, pidFile)
}
