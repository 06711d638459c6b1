package check_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
	"github.com/unionmount/unionmount/thinblock/txn"
)

func readSlot(t *testing.T, dev blockdev.Device, i int) []byte {
	buf := make([]byte, blockdev.BlockSize)
	require.NoError(t, blockdev.ReadBlock(dev, uint64(i), buf))
	return buf
}

// The report tells a damaged superblock copy (a warning, the pool is
// OK) from a damaged newer transaction (a rollback, not OK).
func TestTheReportTellsADamagedCopyFromALostCommit(t *testing.T) {
	meta, data := blockdev.NewMem(), blockdev.NewMem()
	p, err := thinblock.Create(meta, data, thinblock.CreateOptions{DataSize: 64 << 16}, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	require.NoError(t, p.CreateVolume(1, 4<<16))
	v, err := p.Volume(1)
	require.NoError(t, err)
	_, err = v.WriteAt(bytes.Repeat([]byte{1}, 1<<16), 0)
	require.NoError(t, err)
	require.NoError(t, p.Commit())
	primary := 0
	if binary.LittleEndian.Uint32(readSlot(t, meta, 0)[12:])&txn.FlagMirror != 0 {
		primary = 1
	}
	older := readSlot(t, meta, primary)
	_, err = v.WriteAt(bytes.Repeat([]byte{2}, 1<<16), 1<<16)
	require.NoError(t, err)
	require.NoError(t, p.Commit())
	require.NoError(t, p.Close())

	r, err := check.Run(meta, nil)
	require.NoError(t, err)
	assert.True(t, r.OK(), "%v", r.Errors)
	assert.Empty(t, r.Warnings())
	assert.Contains(t, r.Slots[0], "closed cleanly")

	// After the clean close either slot may go: nothing is lost.
	saved := readSlot(t, meta, 0)
	require.NoError(t, blockdev.WriteBlock(meta, 0, make([]byte, blockdev.BlockSize)))
	r, err = check.Run(meta, nil)
	require.NoError(t, err)
	assert.True(t, r.OK())
	require.Len(t, r.Warnings(), 1)
	assert.Contains(t, r.Warnings()[0], "nothing is lost")
	require.NoError(t, blockdev.WriteBlock(meta, 0, saved))

	// The older transaction back in its slot, the newer one zeroed: as
	// if the copy never reached the disk and then the block was lost.
	newerTxn := r.Superblock.TxnID
	require.NoError(t, blockdev.WriteBlock(meta, uint64(primary), older))
	require.NoError(t, blockdev.WriteBlock(meta, uint64(1-primary), make([]byte, blockdev.BlockSize)))
	r, err = check.Run(meta, nil)
	require.NoError(t, err)
	assert.False(t, r.OK())
	assert.True(t, r.Recovery.Lost)
	assert.Equal(t, newerTxn, r.Recovery.LostTxn)
	assert.Equal(t, 0, r.ErrorCount, "the older transaction itself is whole")
	assert.Empty(t, r.Warnings())
}
