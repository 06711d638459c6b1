package thinblock_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
)

const testBlock = thinblock.MinBlockSize

// memPool is a pool on in-memory devices that can lose power.
type memPool struct {
	meta, data *blockdev.Mem
	pool       *thinblock.Pool
}

// fataler is what testing.T and rapid.T share.
type fataler interface {
	Fatalf(format string, args ...any)
}

func newMemPool(t fataler, dataBlocks uint64, opts thinblock.Options) *memPool {
	m := &memPool{meta: blockdev.NewMem(), data: blockdev.NewMem()}
	p, err := thinblock.Create(m.meta, m.data, thinblock.CreateOptions{BlockSize: testBlock, DataSize: dataBlocks * testBlock}, opts)
	if err != nil {
		t.Fatalf("create pool: %v", err)
	}
	m.pool = p
	return m
}

// powerCut drops every unsynced write and reopens the pool from what
// survived.
func (m *memPool) powerCut(opts thinblock.Options, keep func(int64) bool) error {
	// Unsynced metadata pages may reach the disk in any order; none of
	// them may matter. Unflushed data writes are left out entirely so
	// the model stays exact (a disk may keep some, which is allowed).
	m.meta.CrashKeeping(keep)
	m.data.Crash()
	m.meta, m.data = m.meta.Reopen(), m.data.Reopen()
	p, err := thinblock.Open(m.meta, m.data, opts)
	m.pool = p
	return err
}

func (m *memPool) checkClean(t fataler) {
	r, err := check.Run(m.meta, nil)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if !r.OK() {
		t.Fatalf("check found %d problems:\n%v", r.ErrorCount, r.Errors)
	}
}

// model is what each volume must read as.
type model map[uint64][]byte

func (m model) clone() model {
	c := model{}
	for id, b := range m {
		c[id] = append([]byte(nil), b...)
	}
	return c
}

func (m model) ids() []uint64 {
	var ids []uint64
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func randomChecks() int {
	if os.Getenv("UNIONMOUNT_LONG") != "" {
		return 3000
	}
	return 300
}

// TestPoolMatchesModel applies random create, snapshot, delete, write,
// discard, write-zeroes, flush, reopen and power cuts to a pool and to a
// model of each volume's bytes; contents must match after every step, and
// check must pass on every committed state.
func TestPoolMatchesModel(t *testing.T) {
	for i := 0; i < randomChecks()/50; i++ {
		rapid.Check(t, func(rt *rapid.T) { poolModelRun(rt) })
	}
}

func poolModelRun(rt *rapid.T) {
	opts := thinblock.Options{CommitInterval: -1, CacheBlocks: rapid.SampledFrom([]int{16, 4096}).Draw(rt, "cache")}
	mp := newMemPool(rt, 512, opts)
	cur, flushed := model{}, model{}
	nextID := uint64(1)
	steps := rapid.IntRange(1, 60).Draw(rt, "steps")
	for step := 0; step < steps; step++ {
		p := mp.pool
		ids := cur.ids()
		op := rapid.SampledFrom([]string{"create", "snapshot", "delete", "write", "write", "write",
			"discard", "zeroes", "flush", "reopen", "powercut"}).Draw(rt, "op")
		if len(ids) == 0 && op != "create" && op != "flush" && op != "reopen" && op != "powercut" {
			op = "create"
		}
		switch op {
		case "create":
			if len(ids) >= 6 {
				continue
			}
			size := uint64(rapid.IntRange(1, 8*testBlock).Draw(rt, "size"))
			if err := p.CreateVolume(nextID, size); err != nil {
				rt.Fatalf("create %d: %v", nextID, err)
			}
			cur[nextID] = make([]byte, size)
			nextID++
		case "snapshot":
			if len(ids) >= 6 {
				continue
			}
			origin := rapid.SampledFrom(ids).Draw(rt, "origin")
			if err := p.Snapshot(nextID, origin); err != nil {
				rt.Fatalf("snapshot %d of %d: %v", nextID, origin, err)
			}
			cur[nextID] = append([]byte(nil), cur[origin]...)
			nextID++
		case "delete":
			id := rapid.SampledFrom(ids).Draw(rt, "id")
			if err := p.DeleteVolume(id); err != nil {
				rt.Fatalf("delete %d: %v", id, err)
			}
			delete(cur, id)
		case "write", "discard", "zeroes":
			id := rapid.SampledFrom(ids).Draw(rt, "id")
			size := len(cur[id])
			off := rapid.IntRange(0, size-1).Draw(rt, "off")
			n := rapid.IntRange(1, min(size-off, 3*testBlock)).Draw(rt, "len")
			v, err := p.Volume(id)
			if err != nil {
				rt.Fatal(err)
			}
			switch op {
			case "write":
				fill := byte(rapid.IntRange(1, 255).Draw(rt, "fill"))
				data := bytes.Repeat([]byte{fill}, n)
				if _, err := v.WriteAt(data, int64(off)); err != nil {
					rt.Fatalf("write %d bytes at %d of volume %d: %v", n, off, id, err)
				}
				copy(cur[id][off:], data)
			case "discard":
				if err := v.Discard(int64(off), int64(n)); err != nil {
					rt.Fatalf("discard: %v", err)
				}
				clear(cur[id][off : off+n])
			case "zeroes":
				unmap := rapid.Bool().Draw(rt, "unmap")
				if err := v.WriteZeroes(int64(off), int64(n), unmap); err != nil {
					rt.Fatalf("write zeroes: %v", err)
				}
				clear(cur[id][off : off+n])
			}
		case "flush":
			if err := p.Commit(); err != nil {
				rt.Fatalf("commit: %v", err)
			}
			flushed = cur.clone()
			mp.checkClean(rt)
		case "reopen":
			if err := p.Close(); err != nil {
				rt.Fatalf("close: %v", err)
			}
			flushed = cur.clone()
			np, err := thinblock.Open(mp.meta, mp.data, opts)
			if err != nil {
				rt.Fatalf("reopen: %v", err)
			}
			mp.pool = np
			mp.checkClean(rt)
		case "powercut":
			seed := rapid.Int64().Draw(rt, "seed")
			keep := func(page int64) bool { return (page*2654435761+seed)&4 != 0 }
			if err := mp.powerCut(opts, keep); err != nil {
				rt.Fatalf("reopen after power cut: %v", err)
			}
			cur = flushed.clone()
			mp.checkClean(rt)
		}
		compareModel(rt, fmt.Sprintf("after step %d (%s)", step, op), mp.pool, cur)
	}
}

func compareModel(t *rapid.T, when string, p *thinblock.Pool, m model) {
	vols, err := p.Volumes()
	if err != nil {
		t.Fatalf("%s: list: %v", when, err)
	}
	if len(vols) != len(m) {
		t.Fatalf("%s: pool has %d volumes, model %d", when, len(vols), len(m))
	}
	for _, id := range m.ids() {
		v, err := p.Volume(id)
		if err != nil {
			t.Fatalf("%s: volume %d: %v", when, id, err)
		}
		got := make([]byte, len(m[id]))
		if _, err := v.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: read volume %d: %v", when, id, err)
		}
		if !bytes.Equal(got, m[id]) {
			for i := range got {
				if got[i] != m[id][i] {
					t.Fatalf("%s: volume %d differs from the model at byte %d (block %d): got %d, want %d",
						when, id, i, i/testBlock, got[i], m[id][i])
				}
			}
		}
	}
}

func TestSnapshotSharesBlocksAndCopiesOnFirstWrite(t *testing.T) {
	mp := newMemPool(t, 64, thinblock.Options{CommitInterval: -1})
	p := mp.pool
	require.NoError(t, p.CreateVolume(1, 8*testBlock))
	v, _ := p.Volume(1)
	_, err := v.WriteAt(bytes.Repeat([]byte{1}, 8*testBlock), 0)
	require.NoError(t, err)
	require.NoError(t, p.Snapshot(2, 1))
	require.NoError(t, p.Snapshot(3, 2)) // a snapshot of a snapshot
	st, _ := p.Status()
	assert.Equal(t, uint64(64-8), st.FreeBlocks, "snapshots take no data space")

	_, err = v.WriteAt([]byte{9}, 0) // first write to a shared block copies it
	require.NoError(t, err)
	st, _ = p.Status()
	assert.Equal(t, uint64(64-9), st.FreeBlocks)
	buf := make([]byte, 1)
	s, _ := p.Volume(3)
	_, err = s.ReadAt(buf, 0)
	require.NoError(t, err)
	assert.Equal(t, byte(1), buf[0], "the snapshot keeps the old data")

	vols, err := p.Volumes()
	require.NoError(t, err)
	assert.Equal(t, uint64(1), vols[0].Exclusive)
	assert.Equal(t, uint64(7), vols[0].Shared)

	require.NoError(t, p.DeleteVolume(1))
	require.NoError(t, p.Commit())
	st, _ = p.Status()
	assert.Equal(t, uint64(64-8), st.FreeBlocks, "deleting frees exactly the block no one else uses")
	mp.checkClean(t)
}

func TestFullPoolAnswersENOSPCAndKeepsOverwritesWorking(t *testing.T) {
	mp := newMemPool(t, 4, thinblock.Options{CommitInterval: -1})
	p := mp.pool
	require.NoError(t, p.CreateVolume(1, 16*testBlock))
	v, _ := p.Volume(1)
	for i := 0; i < 4; i++ {
		_, err := v.WriteAt([]byte{byte(i + 1)}, int64(i*testBlock))
		require.NoError(t, err)
	}
	_, err := v.WriteAt([]byte{5}, 4*testBlock)
	assert.True(t, errors.Is(err, thinblock.ErrNoSpace), "got %v", err)
	st, _ := p.Status()
	assert.True(t, st.OutOfSpace)
	_, err = v.WriteAt([]byte{7}, 0)
	assert.NoError(t, err, "a provisioned block can still be written")
	require.NoError(t, p.Commit())
	mp.checkClean(t)
}

func TestBadInputLeavesThePoolUnchanged(t *testing.T) {
	mp := newMemPool(t, 16, thinblock.Options{CommitInterval: -1})
	p := mp.pool
	require.NoError(t, p.CreateVolume(1, testBlock))
	require.NoError(t, p.Commit())
	v, _ := p.Volume(1)
	_, err := v.WriteAt([]byte{1, 2}, testBlock-1)
	assert.ErrorIs(t, err, thinblock.ErrOutOfRange)
	_, err = v.ReadAt(make([]byte, 2), testBlock-1)
	assert.ErrorIs(t, err, thinblock.ErrOutOfRange)
	assert.ErrorIs(t, p.Snapshot(2, 99), thinblock.ErrNoVolume)
	assert.ErrorIs(t, p.DeleteVolume(99), thinblock.ErrNoVolume)
	assert.ErrorIs(t, p.CreateVolume(1, testBlock), thinblock.ErrVolumeExists)
	_, err = thinblock.Create(blockdev.NewMem(), blockdev.NewMem(), thinblock.CreateOptions{BlockSize: 96 << 10, DataSize: 1 << 20}, thinblock.Options{})
	assert.ErrorIs(t, err, thinblock.ErrBadBlockSize)
	st, _ := p.Status()
	assert.Equal(t, 1, st.Volumes)
	assert.Equal(t, uint64(16), st.FreeBlocks)
}

// On a file, copy-on-write copies the shared block inside the kernel and
// then writes the new chunk; fresh blocks that are holes skip the punch.
// Both sides must read back exactly.
func TestCopyOnWriteOfAFileBackedPool(t *testing.T) {
	dir := t.TempDir()
	p, err := openFilePool(dir, true)
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.CreateVolume(1, 4*testBlock))
	v, _ := p.Volume(1)
	old := make([]byte, 2*testBlock)
	for i := range old {
		old[i] = byte(i % 251)
	}
	_, err = v.WriteAt(old, 0)
	require.NoError(t, err)
	require.NoError(t, p.Snapshot(2, 1))
	chunk := bytes.Repeat([]byte{0xab}, 4096)
	_, err = v.WriteAt(chunk, testBlock+8192) // inside the second, shared block
	require.NoError(t, err)
	_, err = v.WriteAt(chunk, 3*testBlock+4096) // a fresh block, partly written
	require.NoError(t, err)

	want := append([]byte(nil), old...)
	copy(want[testBlock+8192:], chunk)
	got := make([]byte, 4*testBlock)
	_, err = v.ReadAt(got, 0)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, got[:2*testBlock]), "the origin has the old data with the new chunk")
	assert.True(t, bytes.Equal(make([]byte, 4096), got[3*testBlock:3*testBlock+4096]), "a fresh block reads zeros around a write")
	assert.True(t, bytes.Equal(chunk, got[3*testBlock+4096:3*testBlock+8192]))
	s, _ := p.Volume(2)
	_, err = s.ReadAt(got, 0)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(old, got[:2*testBlock]), "the snapshot keeps the old data")

	// Blocks freed and used again are not holes: their old data must
	// not show around a partial write.
	require.NoError(t, p.DeleteVolume(1))
	require.NoError(t, p.DeleteVolume(2))
	require.NoError(t, p.Commit())
	require.NoError(t, p.CreateVolume(3, 8*testBlock))
	n, _ := p.Volume(3)
	for b := int64(0); b < 8; b++ {
		_, err = n.WriteAt(chunk[:512], b*testBlock+512)
		require.NoError(t, err)
	}
	got = make([]byte, 8*testBlock)
	_, err = n.ReadAt(got, 0)
	require.NoError(t, err)
	for b := 0; b < 8; b++ {
		blk := got[b*testBlock : (b+1)*testBlock]
		assert.True(t, bytes.Equal(make([]byte, 512), blk[:512]), "block %d before the write", b)
		assert.True(t, bytes.Equal(make([]byte, testBlock-1024), blk[1024:]), "block %d after the write", b)
	}
}
