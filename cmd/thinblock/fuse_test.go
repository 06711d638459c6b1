package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/unionmount/unionmount/internal/fstest"
	"golang.org/x/sys/unix"
)

// fuseServer runs `thinblock serve fuse` until stop.
type fuseServer struct {
	cmd    *exec.Cmd
	mnt    string
	stderr lockedBuffer // read while the server writes it
}

func serveFuse(t *testing.T, bin, dir string, extra ...string) *fuseServer {
	t.Helper()
	s := &fuseServer{mnt: filepath.Join(t.TempDir(), "volumes")}
	require.NoError(t, os.Mkdir(s.mnt, 0o755))
	s.cmd = exec.Command(bin, append([]string{"serve", "fuse", "--pool", dir, s.mnt}, extra...)...)
	s.cmd.Stderr = &s.stderr
	require.NoError(t, s.cmd.Start())
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			syscall.Unmount(s.mnt, unix.MNT_DETACH)
			s.cmd.Process.Kill()
			s.cmd.Wait()
		}
	})
	// Every caller's pool has a volume: its file shows once the mount is
	// up.
	served := fstest.WaitFor(patience, func() bool {
		ents, _ := os.ReadDir(s.mnt)
		return len(ents) > 0 || exited(s.cmd.Process.Pid)
	})
	ents, _ := os.ReadDir(s.mnt)
	require.True(t, served && len(ents) > 0, "the server did not mount its volumes: %s", s.stderr.String())
	return s
}

func (s *fuseServer) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "%s", s.stderr.String())
	case <-time.After(patience):
		syscall.Unmount(s.mnt, unix.MNT_DETACH)
		s.cmd.Process.Kill()
		<-done
		t.Fatalf("the server did not stop within %v of SIGTERM:\n%s", patience, s.stderr.String())
	}
}

// attach makes a loop device of file and returns it, detached at cleanup.
func attach(t *testing.T, file string, readOnly bool) string {
	t.Helper()
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.Command("losetup", append(args, file)...).CombinedOutput()
	require.NoError(t, err, "losetup: %s", out)
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func detach(t *testing.T, dev string) {
	t.Helper()
	out, err := exec.Command("losetup", "-d", dev).CombinedOutput()
	require.NoError(t, err, "%s", out)
	// The kernel lets go of the backing file only at the device's last
	// close, which may be a prober's (udev's blkid) a while after -d
	// returns.
	require.True(t, fstest.WaitFor(patience, func() bool {
		_, err := os.Stat("/sys/block/" + filepath.Base(dev) + "/loop")
		return err != nil
	}), "%s did not let go of its file", dev)
}

func mountDev(t *testing.T, dev string, opts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fs")
	require.NoError(t, os.Mkdir(dir, 0o755))
	args := []string{dev, dir}
	if len(opts) > 0 {
		args = append([]string{"-o", strings.Join(opts, ",")}, args...)
	}
	runTool(t, "mount", args...)
	t.Cleanup(func() { syscall.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestLoopDeviceOverTheFUSEExport(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	needTools(t, "losetup", "mkfs.ext4")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	bin := thinblockBinary(t, "")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "2G")
	mustRun(t, "create", "--pool", dir, "1", "--size", "256M")

	s := serveFuse(t, bin, dir)
	dev := attach(t, s.mnt+"/1", false)
	runTool(t, "mkfs.ext4", "-q", "-E", "nodiscard", dev)
	fsdir := mountDev(t, dev)
	require.NoError(t, os.MkdirAll(fsdir+"/tree/sub", 0o755))
	require.NoError(t, os.WriteFile(fsdir+"/tree/old.txt", []byte("written before the snapshot"), 0o644))
	require.NoError(t, os.WriteFile(fsdir+"/tree/sub/big", bytes.Repeat([]byte("x"), 3<<20), 0o644))
	runTool(t, "umount", fsdir)
	detach(t, dev)
	s.stop(t)

	// Snapshot while the filesystem is unmounted, then write more.
	mustRun(t, "snapshot", "--pool", dir, "2", "1")
	s = serveFuse(t, bin, dir)
	dev = attach(t, s.mnt+"/1", false)
	fsdir = mountDev(t, dev)
	require.NoError(t, os.WriteFile(fsdir+"/tree/new.txt", []byte("after"), 0o644))
	require.NoError(t, os.Remove(fsdir+"/tree/old.txt"))
	// Discards through the loop device reach the pool as PUNCH_HOLE.
	runTool(t, "fstrim", fsdir)
	runTool(t, "umount", fsdir)
	detach(t, dev)

	// The snapshot mounts read-only with the old tree.
	snap := attach(t, s.mnt+"/2", true)
	snapdir := mountDev(t, snap, "ro", "noload")
	data, err := os.ReadFile(snapdir + "/tree/old.txt")
	require.NoError(t, err)
	assert.Equal(t, "written before the snapshot", string(data))
	_, err = os.Stat(snapdir + "/tree/new.txt")
	assert.True(t, os.IsNotExist(err), "the snapshot does not see later writes")
	big, err := os.ReadFile(snapdir + "/tree/sub/big")
	require.NoError(t, err)
	assert.Equal(t, 3<<20, len(big))
	runTool(t, "umount", snapdir)
	detach(t, snap)

	// SEEK_DATA/SEEK_HOLE show the provisioned ranges of the volume file.
	f, err := os.Open(s.mnt + "/1")
	require.NoError(t, err)
	dataOff, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	require.NoError(t, err)
	holeOff, err := unix.Seek(int(f.Fd()), dataOff, unix.SEEK_HOLE)
	require.NoError(t, err)
	assert.Greater(t, holeOff, dataOff)
	f.Close()
	s.stop(t)
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
	ls := mustRun(t, "ls", "--pool", dir)
	assert.Regexp(t, `(?m)^\s+2\s+256\.0 MiB`, ls)
}

// waitExit waits for the server to exit and returns its exit status.
func (s *fuseServer) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
		return s.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("the server did not exit within %v:\n%s", within, s.stderr.String())
	}
	return -1
}

// Finding 6 of issue 14: SIGTERM while a loop device holds a volume file
// no longer leaves a silent server with the pool locked: it says which
// loop device holds which volume, exits once the device is detached, or
// after --stop-timeout detaches what it can and says what it left.
func TestSIGTERMWhileALoopDeviceHoldsAVolume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	needTools(t, "losetup", "mkfs.ext4")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	bin := thinblockBinary(t, "")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "1G")
	mustRun(t, "create", "--pool", dir, "1", "--size", "64M")
	mustRun(t, "create", "--pool", dir, "2", "--size", "64M")

	t.Run("it exits once the holder is detached", func(t *testing.T) {
		s := serveFuse(t, bin, dir)
		dev := attach(t, s.mnt+"/1", false)
		require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
		require.True(t, fstest.WaitFor(patience, func() bool {
			return strings.Contains(s.stderr.String(), dev+" holds volume 1") || exited(s.cmd.Process.Pid)
		}), "the server neither said who holds the volume nor exited:\n%s", s.stderr.String())
		assert.Contains(t, s.stderr.String(), dev+" holds volume 1")
		require.False(t, exited(s.cmd.Process.Pid), "still serving the loop device:\n%s", s.stderr.String())
		detach(t, dev)
		assert.Equal(t, 0, s.waitExit(t, patience), s.stderr.String())
		mustRun(t, "ls", "--pool", dir) // the pool is unlocked
	})
	t.Run("after the timeout it detaches an idle loop device", func(t *testing.T) {
		s := serveFuse(t, bin, dir, "--stop-timeout", "2s")
		dev := attach(t, s.mnt+"/2", false)
		start := time.Now()
		require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
		assert.Equal(t, 0, s.waitExit(t, patience), s.stderr.String())
		t.Logf("exited %v after SIGTERM:\n%s", time.Since(start), s.stderr.String())
		assert.Contains(t, s.stderr.String(), "detached "+dev+" (volume 2)")
		_, err := os.Stat("/sys/block/" + filepath.Base(dev) + "/loop")
		assert.True(t, os.IsNotExist(err), "the loop device is gone")
		mustRun(t, "ls", "--pool", dir)
	})
	t.Run("after the timeout it says what it left", func(t *testing.T) {
		s := serveFuse(t, bin, dir, "--stop-timeout", "1s")
		dev := attach(t, s.mnt+"/1", false)
		runTool(t, "mkfs.ext4", "-q", "-E", "nodiscard", dev)
		fsdir := mountDev(t, dev)
		require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
		assert.Equal(t, 1, s.waitExit(t, patience), s.stderr.String())
		assert.Contains(t, s.stderr.String(), dev+" (volume 1) is still open")
		assert.Contains(t, s.stderr.String(), "left attached")
		t.Log(s.stderr.String())
		syscall.Unmount(fsdir, unix.MNT_DETACH)
		mustRun(t, "ls", "--pool", dir)
	})
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
}
