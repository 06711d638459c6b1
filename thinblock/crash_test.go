package thinblock_test

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/txn"
)

var errInjected = errors.New("injected crash")

// TestCrashAtEveryCommitPoint stops a commit at each named crash point,
// loses power (keeping a random subset of the unsynced pages, as a disk
// that reorders writes would), reopens, and requires a clean check and
// either the old or the new committed state, with every write flushed
// before the crashed commit present.
func TestCrashAtEveryCommitPoint(t *testing.T) {
	for _, point := range thinblock.CrashPoints() {
		for seed := int64(0); seed < 8; seed++ {
			t.Run(point, func(t *testing.T) {
				crashDuringCommit(t, point, seed)
			})
		}
	}
}

func crashDuringCommit(t *testing.T, point string, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	armed := false
	opts := thinblock.Options{CommitInterval: -1, CacheBlocks: 16 + rng.Intn(64), Crash: func(p string) error {
		if armed && p == point {
			return errInjected
		}
		return nil
	}}
	mp := newMemPool(t, 256, opts)
	p := mp.pool
	// Committed state A: three volumes with content, one a snapshot.
	old := fillVolumes(t, p, rng, 1)
	require.NoError(t, p.Snapshot(3, 1))
	old[3] = append([]byte(nil), old[1]...)
	require.NoError(t, p.Commit())

	// Uncommitted changes B: new writes, a deletion, a new snapshot.
	changed := map[uint64][]byte{}
	for id, b := range old {
		changed[id] = append([]byte(nil), b...)
	}
	v, _ := p.Volume(1)
	data := bytes.Repeat([]byte{0xee}, 3*testBlock)
	_, err := v.WriteAt(data, testBlock/2)
	require.NoError(t, err)
	copy(changed[1][testBlock/2:], data)
	require.NoError(t, p.DeleteVolume(2))
	delete(changed, 2)
	require.NoError(t, p.Snapshot(4, 1))
	changed[4] = append([]byte(nil), changed[1]...)

	armed = true
	err = p.Commit()
	if point == thinblock.CrashAfterDataSync || err != nil {
		require.ErrorIs(t, err, errInjected)
	}
	mp.meta.CrashKeeping(func(int64) bool { return rng.Intn(2) == 0 })
	mp.data.CrashKeeping(func(int64) bool { return rng.Intn(2) == 0 })
	mp.meta, mp.data = mp.meta.Reopen(), mp.data.Reopen()
	armed = false
	np, err := thinblock.Open(mp.meta, mp.data, opts)
	require.NoError(t, err, "reopen after a crash at %s", point)
	mp.pool = np
	mp.checkClean(t)

	vols, err := np.Volumes()
	require.NoError(t, err)
	want := old
	if len(vols) == len(changed) && vols[len(vols)-1].ID == 4 {
		want = changed // the commit got through
	}
	if point == txn.CrashAfterFlip {
		assert.Equal(t, len(changed), len(vols), "a crash after the flip keeps the new state")
	}
	for id, content := range want {
		v, err := np.Volume(id)
		require.NoError(t, err, "volume %d", id)
		got := make([]byte, len(content))
		_, err = v.ReadAt(got, 0)
		require.NoError(t, err)
		if id != 1 || len(want) == len(changed) {
			assert.True(t, bytes.Equal(content, got), "volume %d content after a crash at %s", id, point)
		} else {
			// Volume 1 was overwritten in place before the commit: its
			// unflushed writes may or may not be there, block by block,
			// but the snapshot of its flushed state must be intact.
			assert.Equal(t, len(content), len(got))
		}
	}
}

// fillVolumes creates volumes 1 and 2 with random content and returns it.
func fillVolumes(t *testing.T, p *thinblock.Pool, rng *rand.Rand, _ int) map[uint64][]byte {
	out := map[uint64][]byte{}
	for id := uint64(1); id <= 2; id++ {
		size := uint64(8*testBlock + rng.Intn(testBlock))
		require.NoError(t, p.CreateVolume(id, size))
		content := make([]byte, size)
		rng.Read(content)
		v, _ := p.Volume(id)
		_, err := v.WriteAt(content, 0)
		require.NoError(t, err)
		out[id] = content
	}
	return out
}
