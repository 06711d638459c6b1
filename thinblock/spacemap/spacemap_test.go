package spacemap

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/txn"
)

func newMap(t *testing.T, blocks uint64) *Map {
	t.Helper()
	dev := blockdev.NewMem()
	require.NoError(t, txn.Format(dev, txn.Superblock{DataBlockSize: 64 << 10, DataBlocks: blocks}))
	tm, err := txn.Open(dev, 64)
	require.NoError(t, err)
	m, err := Create(tm, blocks)
	require.NoError(t, err)
	return m
}

// A block reserved for a write that has yet to map it is handed out to
// no one else, keeps count 0 (so a commit meanwhile records it free),
// and becomes used on Claim or free again on Release.
func TestReservedBlocksAreHandedOutOnce(t *testing.T) {
	m := newMap(t, 3)
	r, err := m.Reserve()
	require.NoError(t, err)
	c, err := m.Get(r)
	require.NoError(t, err)
	assert.Zero(t, c, "a reserved block has no reference yet")
	a, err := m.Alloc()
	require.NoError(t, err)
	b, err := m.Alloc()
	require.NoError(t, err)
	assert.NotContains(t, []uint64{a, b}, r)
	_, err = m.Alloc()
	assert.ErrorIs(t, err, ErrNoSpace, "the reserved block is not free")
	m.Committed()
	_, err = m.Reserve()
	assert.ErrorIs(t, err, ErrNoSpace, "a commit keeps the reservation")

	require.NoError(t, m.Claim(r))
	c, err = m.Get(r)
	require.NoError(t, err)
	assert.Equal(t, uint32(1), c)
	assert.Error(t, m.Claim(r), "a block is claimed once")
	// Claimed in this transaction, it is free again at once when dropped.
	require.NoError(t, m.Dec(r))
	again, err := m.Reserve()
	require.NoError(t, err)
	assert.Equal(t, r, again)
	m.Release(again)
	got, err := m.Alloc()
	require.NoError(t, err)
	assert.Equal(t, r, got, "a released reservation is free")
}

func TestNoShrinkingPastAReservedBlock(t *testing.T) {
	m := newMap(t, 4)
	first, err := m.Reserve()
	require.NoError(t, err)
	second, err := m.Reserve()
	require.NoError(t, err)
	require.Greater(t, second, first)
	m.Release(first)
	assert.Error(t, m.Resize(second), "block %d is reserved", second)
	require.NoError(t, m.Resize(second+1))
}
