package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/btree"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// slotBytes reads superblock slot i of a pool's metadata.
func slotBytes(t *testing.T, dir string, i int) []byte {
	b, err := os.ReadFile(dir + "/metadata")
	require.NoError(t, err)
	return append([]byte(nil), b[i*4096:(i+1)*4096]...)
}

func writeSlot(t *testing.T, dir string, i int, buf []byte) {
	f, err := os.OpenFile(dir+"/metadata", os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	_, err = f.WriteAt(buf, int64(i)*4096)
	require.NoError(t, err)
}

// Finding 3 of issue 14, the common case: after a clean stop, losing
// either superblock block loses nothing (both hold the last commit); the
// server serves every flushed page and check says what is damaged.
func TestADestroyedSuperblockAfterACleanStopLosesNothing(t *testing.T) {
	needTools(t, "qemu-io")
	bin := thinblockBinary(t, "")
	s, dir := startServer(t, bin, map[string]string{"1": "16M"})
	// 115 pages written and flushed, as the finding's harness did.
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5e 0 460k", "-c", "flush", s.uri("1"))
	s.stop(t)
	for slot := 0; slot < 2; slot++ {
		t.Run(fmt.Sprintf("slot %d zeroed", slot), func(t *testing.T) {
			saved := slotBytes(t, dir, slot)
			writeSlot(t, dir, slot, make([]byte, 4096))
			out, errOut, code := thinblockCmd("check", "--pool", dir)
			assert.Equal(t, 0, code, "%s%s", out, errOut)
			assert.Contains(t, out, fmt.Sprintf("superblock slot %d is unreadable", slot))
			assert.Contains(t, out, "nothing is lost")
			s := serve(t, bin, dir)
			runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5e 0 460k", s.uri("1"))
			s.stop(t)
			assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
			assert.NotContains(t, mustRun(t, "check", "--pool", dir), "warning", "the stop rewrote the slot")
			writeSlot(t, dir, slot, saved)
		})
	}
}

// rolledBackPool builds the case a clean stop cannot repair: transaction
// N+1 completed, the process died before the copy of its superblock
// reached the disk, and then N+1's superblock was destroyed (damage
// zeroes it, or corrupts it past its header). Only N remains readable.
func rolledBackPool(t *testing.T, damage func(buf []byte)) (dir string, lost uint64) {
	dir = samplePool(t)
	meta, err := blockdev.OpenFile(dir+"/metadata", false)
	require.NoError(t, err)
	data, err := blockdev.OpenFile(dir+"/data", false)
	require.NoError(t, err)
	p, err := thinblock.Open(meta, data, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	v, err := p.Volume(2)
	require.NoError(t, err)
	_, err = v.WriteAt(bytes.Repeat([]byte{0x11}, 64<<10), 0)
	require.NoError(t, err)
	require.NoError(t, p.Commit())
	// Transaction N is the primary just written (no mirror flag).
	primary := 0
	if binary.LittleEndian.Uint32(slotBytes(t, dir, 0)[12:])&txn.FlagMirror != 0 {
		primary = 1
	}
	n := slotBytes(t, dir, primary)
	_, err = v.WriteAt(bytes.Repeat([]byte{0x22}, 64<<10), 64<<10)
	require.NoError(t, err)
	require.NoError(t, p.Commit())
	st, err := p.Status()
	require.NoError(t, err)
	lost = st.TransactionID
	require.NoError(t, p.Close())
	meta.Close()
	data.Close()
	newer := slotBytes(t, dir, 1-primary)
	damage(newer)
	writeSlot(t, dir, primary, n)
	writeSlot(t, dir, 1-primary, newer)
	return dir, lost
}

// Finding 3 of issue 14: when the newest superblock of a completed
// commit is destroyed, check names the transaction that would be lost
// and exits 1, nothing opens the pool without --accept-rollback, and
// serving with it keeps the older transaction for good.
func TestALostCommitIsReportedAndNotServedSilently(t *testing.T) {
	needTools(t, "qemu-io")
	for name, damage := range map[string]func([]byte){
		"zeroed":                    func(b []byte) { clear(b) },
		"corrupted past its header": func(b []byte) { b[300] ^= 0xff },
	} {
		t.Run(name, func(t *testing.T) {
			dir, lost := rolledBackPool(t, damage)
			out, _, code := thinblockCmd("check", "--pool", dir)
			assert.Equal(t, 1, code, out)
			assert.Contains(t, out, fmt.Sprintf("would lose transaction %d", lost))
			assert.Contains(t, out, "--accept-rollback")
			assert.NotContains(t, out, "metadata is consistent")
			for _, args := range [][]string{{"serve", "nbd", "--pool", dir}, {"ls", "--pool", dir}, {"check", "--pool", dir, "--repair"}} {
				out, errOut, code := thinblockCmd(args...)
				assert.Equal(t, 1, code, "%v: %s%s", args, out, errOut)
				assert.Contains(t, out+errOut, fmt.Sprintf("lose transaction %d", lost), "%v", args)
			}
			s := serve(t, thinblockBinary(t, ""), dir, "--accept-rollback")
			// Transaction lost-1 is what is served: the first write, not
			// the second.
			runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 64k", "-c", "read -P 0 64k 64k", s.uri("2"))
			s.stop(t)
			assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
		})
	}
}

// corruptSpaceMapBlock flips a byte in the first block of data block
// counts, as the finding's harness did.
func corruptSpaceMapBlock(t *testing.T, dir string) {
	meta, err := blockdev.OpenFile(dir+"/metadata", false)
	require.NoError(t, err)
	defer meta.Close()
	sb, _, err := txn.ReadSuperblock(meta)
	require.NoError(t, err)
	buf := make([]byte, 4096)
	require.NoError(t, blockdev.ReadBlock(meta, sb.DataSMRoot, buf))
	n, err := btree.Decode(sb.DataSMRoot, buf, 8)
	require.NoError(t, err)
	require.True(t, n.Leaf, "a small pool's space map index is one leaf")
	counts := binary.LittleEndian.Uint64(n.Values[0])
	require.NoError(t, blockdev.ReadBlock(meta, counts, buf))
	buf[100] ^= 0xff
	require.NoError(t, blockdev.WriteBlock(meta, counts, buf))
}

// runBounded runs the binary and fails if it is still running after
// the timeout (a server that started instead of refusing).
func runBounded(t *testing.T, timeout time.Duration, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, thinblockBinary(t, ""), args...)
	out, _ := cmd.CombinedOutput()
	require.NoError(t, ctx.Err(), "thinblock %v did not refuse: %s", args, out)
	return string(out), cmd.ProcessState.ExitCode()
}

// Finding 4 of issue 14: a pool whose metadata the checker rejects is
// not served (it was, with no exports); the message says what is wrong
// and what to run.
func TestAPoolTheCheckerRejectsIsNotServed(t *testing.T) {
	t.Run("a corrupt space map block", func(t *testing.T) {
		dir := samplePool(t)
		corruptSpaceMapBlock(t, dir)
		_, _, code := thinblockCmd("check", "--pool", dir)
		require.Equal(t, 1, code, "the checker rejects it")
		out, code := runBounded(t, 10*time.Second, "serve", "nbd", "--pool", dir)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, out, "fails the check, so it is not served")
		assert.Contains(t, out, "checksum")
		assert.Contains(t, out, "thinblock check --pool "+dir)
		mnt := t.TempDir()
		out, code = runBounded(t, 10*time.Second, "serve", "fuse", "--pool", dir, mnt)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, out, "not served")
	})
	t.Run("a wrong data block count", func(t *testing.T) {
		dir := samplePool(t)
		meta, _ := blockdev.OpenFile(dir+"/metadata", false)
		data, _ := blockdev.OpenFile(dir+"/data", false)
		p, err := thinblock.Open(meta, data, thinblock.Options{CommitInterval: -1})
		require.NoError(t, err)
		require.NoError(t, thinblock.CorruptDataCountForTest(p, 0, 7))
		require.NoError(t, p.Close())
		meta.Close()
		data.Close()
		out, code := runBounded(t, 10*time.Second, "serve", "nbd", "--pool", dir)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, out, "data block 0 has count 7")
		assert.Contains(t, out, "--repair` rebuilds the space map")
	})
}
