package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

// The volume commands reach a running `serve nbd` through its control
// socket: new volumes are exports at once, a deleted one is gone, and
// failures keep their exit status.
func TestVolumeCommandsReachARunningNBDServer(t *testing.T) {
	needTools(t, "nbdinfo", "qemu-io")
	s, dir := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "64M"})
	require.FileExists(t, filepath.Join(dir, "control.sock"))
	st, err := os.Stat(filepath.Join(dir, "control.sock"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	mustRun(t, "create", "--pool", dir, "2", "--size", "10M")
	mustRun(t, "snapshot", "--pool", dir, "3", "1")
	list := runTool(t, "nbdinfo", "--list", "nbd+unix:///?socket="+s.sock)
	for _, e := range []string{"1", "2", "3"} {
		assert.Contains(t, list, fmt.Sprintf("export=%q", e))
	}
	// The new volume serves I/O at once.
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x6c 4096 4096", s.uri("2"))
	runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x6c 4096 4096", s.uri("2"))

	ls := mustRun(t, "ls", "--pool", dir)
	assert.Regexp(t, `(?m)^\s+2\s+10.0 MiB\s+64.0 KiB`, ls)
	status := mustRun(t, "pool", "status", "--pool", dir)
	assert.Contains(t, status, "volumes:         3")
	mustRun(t, "pool", "resize", "--pool", dir, "--size", "64G")
	assert.Contains(t, mustRun(t, "pool", "status", "--pool", dir), "/1048576 blocks used")

	// Errors keep their meaning: a missing volume or a taken id is bad
	// input (2), and a delete naming one missing volume deletes none.
	_, errOut, code := thinblockCmd("delete", "--pool", dir, "2", "9")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "volume 9: no such volume")
	_, errOut, code = thinblockCmd("create", "--pool", dir, "1", "--size", "1M")
	assert.Equal(t, 2, code, errOut)
	assert.Contains(t, errOut, "already in use")

	mustRun(t, "delete", "--pool", dir, "2", "3")
	list = runTool(t, "nbdinfo", "--list", "nbd+unix:///?socket="+s.sock)
	assert.Contains(t, list, `export="1"`)
	assert.NotContains(t, list, `export="2"`)
	assert.NotContains(t, list, `export="3"`)
	s.stop(t)
	_, err = os.Stat(filepath.Join(dir, "control.sock"))
	assert.True(t, os.IsNotExist(err), "the control socket is removed when the server stops")
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
}

// A volume an NBD client has open is not deleted: the refusal names the
// client's process.
func TestDeleteOfAVolumeAnNBDClientHoldsIsRefused(t *testing.T) {
	s, dir := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "8M", "2": "8M"})
	c := dialExport(t, s.sock, "1")
	_, errOut, code := thinblockCmd("delete", "--pool", dir, "1")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "volume 1 is in use: NBD client process "+fmt.Sprint(os.Getpid()))
	assert.Contains(t, errOut, "device or resource busy")
	c.conn.Close()
	deleteOnceReleased(t, dir, "1")
	assert.NotContains(t, mustRun(t, "ls", "--pool", dir), "\n    1 ")
}

// When the lock is held and no control socket answers, the error names
// the process holding the lock.
func TestALockedPoolWithoutAControlSocketNamesItsHolder(t *testing.T) {
	s, dir := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "8M"})
	require.NoError(t, os.Remove(filepath.Join(dir, "control.sock")))
	_, errOut, code := thinblockCmd("ls", "--pool", dir)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, fmt.Sprintf("is in use by process %d (%s serve nbd --pool %s)", s.cmd.Process.Pid, s.cmd.Path, dir))
	assert.Contains(t, errOut, "no control socket answers at "+filepath.Join(dir, "control.sock"))
	// A command that reads the metadata itself names the holder too.
	_, errOut, _ = thinblockCmd("delta", "--pool", dir, "1", "1")
	assert.Contains(t, errOut, fmt.Sprintf("in use by process %d", s.cmd.Process.Pid))
	s.stop(t)
}

// Through the FUSE export: a new volume is a file at once, a deleted one
// goes, and a file a loop device holds is not deleted.
func TestVolumeCommandsReachARunningFUSEServer(t *testing.T) {
	requireRootFUSE(t)
	needTools(t, "losetup")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "1G")
	mustRun(t, "create", "--pool", dir, "1", "--size", "16M")
	s := serveFuse(t, thinblockBinary(t, ""), dir)

	mustRun(t, "create", "--pool", dir, "5", "--size", "32M")
	st, err := os.Stat(filepath.Join(s.mnt, "5"))
	require.NoError(t, err, "a new volume is a file at once")
	assert.Equal(t, int64(32<<20), st.Size())
	w, err := os.OpenFile(filepath.Join(s.mnt, "5"), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("written through the new file"), 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	mustRun(t, "snapshot", "--pool", dir, "6", "5")
	got, err := os.ReadFile(filepath.Join(s.mnt, "6"))
	require.NoError(t, err)
	assert.Equal(t, "written through the new file", string(got[:28]))

	dev := attach(t, filepath.Join(s.mnt, "5"), false)
	_, errOut, code := thinblockCmd("delete", "--pool", dir, "5")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, fmt.Sprintf("volume 5 is in use: %s (a loop device) over %s", dev, filepath.Join(s.mnt, "5")))
	f, err := os.Open(filepath.Join(s.mnt, "6"))
	require.NoError(t, err)
	_, errOut, _ = thinblockCmd("delete", "--pool", dir, "6")
	assert.Contains(t, errOut, "open 1 times through the FUSE export")
	f.Close()
	detach(t, dev)
	deleteOnceReleased(t, dir, "5", "6")
	ents, err := os.ReadDir(s.mnt)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{"1"}, names)
	_, err = os.Stat(filepath.Join(s.mnt, "5"))
	assert.True(t, os.IsNotExist(err), "a deleted volume's file is gone: %v", err)
	s.stop(t)
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
}

// requireRootFUSE skips unless loop devices, mounts and FUSE are there.
func requireRootFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

// pool status (text and --json) gives the figures docker info shows, and
// fails when the pool is out of data space; ls --json lists the volumes.
func TestPoolStatusAndLsAsJSONAndAFullPool(t *testing.T) {
	needTools(t, "qemu-io")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "1M", "--low-water", "4")
	mustRun(t, "create", "--pool", dir, "1", "--size", "4M")
	out := mustRun(t, "pool", "status", "--pool", dir, "--json")
	var st struct {
		BlockSize  uint64 `json:"block_size"`
		DataBlocks uint64 `json:"data_blocks"`
		FreeBlocks uint64 `json:"free_blocks"`
		LowWater   uint64 `json:"low_water_blocks"`
		OutOfSpace bool   `json:"out_of_space"`
		MetaBlocks uint64 `json:"metadata_blocks"`
		MetaUsed   uint64 `json:"metadata_used_blocks"`
		Txn        uint64 `json:"transaction_id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	assert.Equal(t, uint64(64<<10), st.BlockSize)
	assert.Equal(t, uint64(16), st.DataBlocks)
	assert.Equal(t, uint64(16), st.FreeBlocks)
	assert.Equal(t, uint64(4), st.LowWater)
	assert.False(t, st.OutOfSpace)
	assert.NotZero(t, st.MetaUsed)
	assert.Less(t, st.MetaUsed, st.MetaBlocks)

	s := serve(t, thinblockBinary(t, ""), dir)
	// 1 MiB fills the 16 blocks; the next new block is refused.
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "flush", s.uri("1"))
	outText, errOut, code := thinblockCmd("pool", "status", "--pool", dir)
	assert.Equal(t, 1, code, "out of space is a failure: %s", outText)
	assert.Contains(t, outText, "data:            16/16 blocks used")
	assert.Contains(t, outText, "out of data space")
	assert.Contains(t, errOut, "out of data space")
	out, _, code = thinblockCmd("pool", "status", "--pool", dir, "--json")
	assert.Equal(t, 1, code)
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	assert.True(t, st.OutOfSpace)
	assert.Zero(t, st.FreeBlocks)

	out = mustRun(t, "ls", "--pool", dir, "--json")
	var vols []struct {
		ID     uint64 `json:"id"`
		Size   uint64 `json:"size"`
		Mapped uint64 `json:"mapped_blocks"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &vols), out)
	require.Len(t, vols, 1)
	assert.Equal(t, uint64(4<<20), vols[0].Size)
	assert.Equal(t, uint64(16), vols[0].Mapped)

	// Growing it through the server makes it writable again.
	mustRun(t, "pool", "resize", "--pool", dir, "--size", "2M")
	mustRun(t, "pool", "status", "--pool", dir)
	s.stop(t)
}

func TestVersionAndVolumeIDLimit(t *testing.T) {
	out := mustRun(t, "--version")
	assert.True(t, strings.HasPrefix(out, "thinblock "), out)
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "1M")
	mustRun(t, "create", "--pool", dir, "16777215", "--size", "1M")
	_, errOut, code := thinblockCmd("create", "--pool", dir, "16777216", "--size", "1M")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "above dm-thin's 24-bit limit")
	_, errOut, code = thinblockCmd("snapshot", "--pool", dir, "16777216", "16777215")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "24-bit limit")
}

// Deleting a volume of a served, file-backed pool gives its space back to
// the host within a commit interval; pool trim works through the server.
func TestDeleteOnAServedPoolGivesSpaceBack(t *testing.T) {
	needTools(t, "qemu-io")
	s, dir := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "128M", "2": "8M"})
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64M", "-c", "flush", s.uri("1"))
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x6b 0 1M", "-c", "flush", s.uri("2"))
	data := filepath.Join(dir, "data")
	allocated := func() int64 { return fstest.DataBytes(t, data) }
	full := allocated()
	require.GreaterOrEqual(t, full, int64(65<<20))
	mustRun(t, "delete", "--pool", dir, "1")
	fstest.WaitFor(patience, func() bool { return allocated() <= full-int64(64<<20) })
	assert.LessOrEqual(t, allocated(), full-int64(64<<20), "the deleted volume's 64 MiB go back to the host at the next commit")
	assert.Contains(t, mustRun(t, "pool", "trim", "--pool", dir), "trimmed ")
	runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x6b 0 1M", s.uri("2"))
	s.stop(t)
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
}

// ls shows each volume's name, origin and read-only attribute, locally
// and through a server; a thin_dump round trip keeps the volumes and
// drops the attributes, as dm-thin has none.
func TestLsShowsNamesOriginsAndReadOnly(t *testing.T) {
	needTools(t, "nbdinfo")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "64M")
	mustRun(t, "create", "--pool", dir, "1", "--size", "8M", "--name", "base")
	mustRun(t, "snapshot", "--pool", dir, "2", "1", "--read-only", "--name", "layer-1")
	s := serve(t, thinblockBinary(t, ""), dir)
	mustRun(t, "snapshot", "--pool", dir, "3", "2", "--name", "container-a")
	ls := mustRun(t, "ls", "--pool", dir)
	assert.Regexp(t, `(?m)^\s*DEV\s+SIZE\s+MAPPED\s+EXCLUSIVE\s+SHARED\s+RO\s+ORIGIN\s+NAME$`, ls)
	assert.Regexp(t, `(?m)^\s+1\s.*\s-\s+-\s+base$`, ls)
	assert.Regexp(t, `(?m)^\s+2\s.*\sro\s+1\s+layer-1$`, ls)
	assert.Regexp(t, `(?m)^\s+3\s.*\s-\s+2\s+container-a$`, ls)
	var vols []struct {
		ID       uint64  `json:"id"`
		Name     string  `json:"name"`
		ReadOnly bool    `json:"read_only"`
		Origin   *uint64 `json:"origin"`
	}
	out := mustRun(t, "ls", "--pool", dir, "--json")
	require.NoError(t, json.Unmarshal([]byte(out), &vols), out)
	require.Len(t, vols, 3)
	assert.Equal(t, "layer-1", vols[1].Name)
	assert.True(t, vols[1].ReadOnly)
	require.NotNil(t, vols[2].Origin)
	assert.Equal(t, uint64(2), *vols[2].Origin)
	assert.Nil(t, vols[0].Origin)
	_, errOut, code := thinblockCmd("create", "--pool", dir, "4", "--size", "1M", "--name", "with space")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "no spaces")

	// set changes them on a served pool; the export follows.
	assert.NotContains(t, runTool(t, "nbdinfo", s.uri("3")), "is_read_only: true")
	mustRun(t, "set", "--pool", dir, "3", "--read-only", "--name", "layer-2")
	assert.Regexp(t, `(?m)^\s+3\s.*\sro\s+2\s+layer-2$`, mustRun(t, "ls", "--pool", dir))
	assert.Contains(t, runTool(t, "nbdinfo", s.uri("3")), "is_read_only: true")
	mustRun(t, "set", "--pool", dir, "3", "--writable")
	assert.Contains(t, runTool(t, "nbdinfo", s.uri("3")), "is_read_only: false")
	_, errOut, code = thinblockCmd("set", "--pool", dir, "3")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "set what?")
	s.stop(t)

	xml := filepath.Join(t.TempDir(), "dump.xml")
	mustRun(t, "dump", "--pool", dir, "-o", xml)
	restored := filepath.Join(t.TempDir(), "restored")
	mustRun(t, "restore", "--pool", restored, "-i", xml)
	ls = mustRun(t, "ls", "--pool", restored)
	assert.NotContains(t, ls, "layer-1")
	assert.Regexp(t, `(?m)^\s+3\s`, ls)
	assert.Contains(t, mustRun(t, "check", "--pool", restored), "metadata is consistent")
}

// Crossing the low-water mark runs the configured command once, with the
// pool's figures; here it grows the pool through the control socket, as
// lvm's autoextend does, while writes that found no block wait
// (--no-space=queue) and then complete. The mark keeps its share.
func TestLowWaterCommandGrowsThePoolWhileWritesWait(t *testing.T) {
	needTools(t, "qemu-io")
	bin := thinblockBinary(t, "")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "1M", "--low-water", "4")
	mustRun(t, "create", "--pool", dir, "1", "--size", "8M")
	logPath := filepath.Join(dir, "low-water.log")
	command := fmt.Sprintf(`echo "$THINBLOCK_FREE_BLOCKS $THINBLOCK_LOW_WATER_BLOCKS $THINBLOCK_DATA_BLOCKS $THINBLOCK_BLOCK_SIZE" >> %s; %s pool resize --pool "$THINBLOCK_POOL" --size 5M`, logPath, bin)
	s := serve(t, bin, dir, "--low-water-command", command, "--no-space", "queue:2m")
	// 3 MiB: 48 blocks, three times what the pool has at first. The pool
	// grows to 80 blocks, whose mark (20) stays below the 32 left free at
	// the end: a pool that ended on its new mark could cross it a second
	// time, depending on when the watcher polls.
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 3M", "-c", "flush", s.uri("1"))
	runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 3M", s.uri("1"))
	out, err := os.ReadFile(logPath)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.Len(t, lines, 1, "the command runs once per crossing: %q", out)
	var free, lw, blocks, bs uint64
	_, err = fmt.Sscan(lines[0], &free, &lw, &blocks, &bs)
	require.NoError(t, err)
	assert.LessOrEqual(t, free, uint64(4))
	assert.Equal(t, []uint64{4, 16, 64 << 10}, []uint64{lw, blocks, bs})
	st := mustRun(t, "pool", "status", "--pool", dir)
	assert.Contains(t, st, "48/80 blocks used")
	assert.Contains(t, st, "low water mark:  20 free blocks", "the mark is rescaled with the pool")
	assert.Contains(t, s.stop(t), "at or below the low-water mark")
}

// Without a command, a queued write waits until the pool is grown by
// hand; with --no-space=error (the default) it fails at once.
func TestOutOfSpacePolicies(t *testing.T) {
	needTools(t, "qemu-io")
	bin := thinblockBinary(t, "")
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "1M")
	mustRun(t, "create", "--pool", dir, "1", "--size", "8M")
	s := serve(t, bin, dir, "--no-space", "queue")
	uri := s.uri("1")
	done := make(chan error, 1)
	go func() {
		out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x4d 0 2M", "-c", "flush", uri).CombinedOutput()
		if err == nil && strings.Contains(string(out), "error") {
			err = fmt.Errorf("%s", out)
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the write did not wait for space: %v", err)
	case <-time.After(time.Second):
	}
	mustRun(t, "pool", "resize", "--pool", dir, "--size", "4M")
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(patience):
		t.Fatal("the queued write did not complete after the pool grew")
	}
	runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x4d 0 2M", uri)
	s.stop(t)

	// The default fails the write rather than queueing it: a queued
	// write would still be waiting when the context ends qemu-io (the
	// pool is never grown), and its output would say no error.
	s = serve(t, bin, dir)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "write -P 0x4e 2M 4M", uri).CombinedOutput()
	require.NoError(t, ctx.Err(), "the write waited for space: %s", out)
	assert.Contains(t, string(out), "No space left on device")
	s.stop(t)

	_, errOut, code := thinblockCmd("serve", "nbd", "--pool", dir, "--no-space", "queue:soon")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "the timeout must be a duration")
}

// Whoever sees a server (its NBD socket, its volume files) can run the
// volume commands at once: the control socket is there first.
func TestTheVolumeCommandsReachAServerTheMomentItShows(t *testing.T) {
	bin := thinblockBinary(t, "")
	cases := []struct {
		name  string
		args  func(dir, mnt string) []string
		shows func(dir, mnt string) bool
	}{
		{"serve nbd", func(dir, _ string) []string { return []string{"serve", "nbd", "--pool", dir} },
			func(dir, _ string) bool { _, err := os.Stat(filepath.Join(dir, "nbd.sock")); return err == nil }},
		{"serve fuse", func(dir, mnt string) []string { return []string{"serve", "fuse", "--pool", dir, mnt} },
			func(_, mnt string) bool { ents, _ := os.ReadDir(mnt); return len(ents) > 0 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "serve fuse" {
				requireRootFUSE(t)
			}
			for round := 0; round < 3; round++ {
				dir := filepath.Join(t.TempDir(), "pool")
				mnt := t.TempDir()
				mustRun(t, "pool", "create", "--pool", dir, "--size", "1G")
				mustRun(t, "create", "--pool", dir, "1", "--size", "16M")
				cmd := exec.Command(bin, c.args(dir, mnt)...)
				var stderr lockedBuffer
				cmd.Stderr = &stderr
				require.NoError(t, cmd.Start())
				shown := fstest.WaitFor(patience, func() bool { return c.shows(dir, mnt) })
				_, statErr := os.Stat(filepath.Join(dir, "control.sock"))
				_, errOut, code := thinblockCmd("create", "--pool", dir, "2", "--size", "8M")
				syscall.Unmount(mnt, unix.MNT_DETACH)
				cmd.Process.Signal(syscall.SIGTERM)
				cmd.Wait()
				require.True(t, shown, "the server did not show: %s", stderr.String())
				require.NoError(t, statErr, "round %d: the control socket is missing when the server shows", round)
				require.Equal(t, 0, code, "round %d: %s", round, errOut)
			}
		})
	}
}
