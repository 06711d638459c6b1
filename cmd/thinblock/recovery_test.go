package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"testing"

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
// patience (a server that started instead of refusing).
func runBounded(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
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
		out, code := runBounded(t, "serve", "nbd", "--pool", dir)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, out, "fails the check, so it is not served")
		assert.Contains(t, out, "checksum")
		assert.Contains(t, out, "thinblock check --pool "+dir)
		mnt := t.TempDir()
		out, code = runBounded(t, "serve", "fuse", "--pool", dir, mnt)
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
		out, code := runBounded(t, "serve", "nbd", "--pool", dir)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, out, "data block 0 has count 7")
		assert.Contains(t, out, "--repair` rebuilds the space map")
	})
}

// redirectMapping changes volume id's first mapping to data block
// to in its leaf and reseals the node, as a bug or an attacker that knows
// the format would: the node's checksum holds, only the space map
// disagrees. It assumes one-node device and mapping trees, and returns
// the volume block and the data block it mapped before.
func redirectMapping(t *testing.T, meta blockdev.Device, id, to uint64) (vb, from uint64) {
	t.Helper()
	sb, _, err := txn.ReadSuperblock(meta)
	require.NoError(t, err)
	buf := make([]byte, blockdev.BlockSize)
	require.NoError(t, blockdev.ReadBlock(meta, sb.DevicesRoot, buf))
	devs, err := btree.Decode(sb.DevicesRoot, buf, thinblock.DetailsValueSize)
	require.NoError(t, err)
	require.True(t, devs.Leaf)
	var root uint64
	for i, k := range devs.Keys {
		if k == id {
			d, err := thinblock.DecodeDeviceDetails(devs.Values[i])
			require.NoError(t, err)
			root = d.MappingRoot
		}
	}
	require.NotZero(t, root, "volume %d", id)
	require.NoError(t, blockdev.ReadBlock(meta, root, buf))
	n, err := btree.Decode(root, buf, thinblock.MappingValueSize)
	require.NoError(t, err)
	require.True(t, n.Leaf)
	require.NotEmpty(t, n.Keys)
	from, _ = thinblock.UnpackMapping(n.Values[0])
	// Keys then values, 8 bytes each, after the 32-byte header.
	const capa = (blockdev.BlockSize - 32) / 16
	off := 32 + 8*capa
	v := binary.LittleEndian.Uint64(buf[off:])
	binary.LittleEndian.PutUint64(buf[off:], v&^(1<<40-1)|to)
	blockdev.Seal(buf, 0x6e0de5) // the B-tree's checksum salt
	require.NoError(t, blockdev.WriteBlock(meta, root, buf))
	return n.Keys[0], from
}

// Finding 5 of issue 14: after a mapping is changed and its node
// resealed, check --repair no longer makes the space map agree with the
// wrong mapping and report success: it names the mapping, changes
// nothing and exits 1; --trust-mappings rebuilds, saying what it trusted.
func TestCheckRepairDoesNotVouchForAChangedMapping(t *testing.T) {
	dir := samplePool(t)
	meta, err := blockdev.OpenFile(dir+"/metadata", false)
	require.NoError(t, err)
	vb, from := redirectMapping(t, meta, 2, 500)
	meta.Close()
	out, _, code := thinblockCmd("check", "--pool", dir)
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "data block 500 has count 0, the mappings give 1")
	before, err := os.ReadFile(dir + "/metadata")
	require.NoError(t, err)
	out, errOut, code := thinblockCmd("check", "--pool", dir, "--repair")
	assert.Equal(t, 1, code, out+errOut)
	assert.NotRegexp(t, `(?m)^repaired:`, out)
	assert.Contains(t, out, "NOT repaired")
	assert.Contains(t, out, fmt.Sprintf("volume 2 block %d -> data block 500", vb))
	assert.Contains(t, out, fmt.Sprintf("may be there): %d", from))
	after, err := os.ReadFile(dir + "/metadata")
	require.NoError(t, err)
	assert.True(t, bytes.Equal(before, after), "nothing changed")
	out, code = runBounded(t, "serve", "nbd", "--pool", dir)
	assert.Equal(t, 1, code, "not served: %s", out)

	out, errOut, code = thinblockCmd("check", "--pool", dir, "--repair", "--trust-mappings")
	assert.Equal(t, 0, code, out+errOut)
	assert.Contains(t, out, "trusted (--trust-mappings) 1 mappings")
	assert.Contains(t, out, fmt.Sprintf("freed 1 data blocks no mapping refers to: %d", from))
}
