package txn

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// slots writes the two superblock slots: a transaction id and flags
// each, or a raw block (nil: zeros).
type slotContent struct {
	txn   uint64
	flags uint32
	raw   func(buf []byte) // damages the encoded block
}

func writeSlots(t *testing.T, slots [2]*slotContent) blockdev.Device {
	dev := blockdev.NewMem()
	require.NoError(t, dev.Truncate(4*blockdev.BlockSize))
	for i, s := range slots {
		buf := make([]byte, blockdev.BlockSize)
		if s != nil {
			(&Superblock{TxnID: s.txn, Flags: s.flags, DataBlockSize: 65536, DataBlocks: 10}).encode(buf)
			if s.raw != nil {
				s.raw(buf)
			}
		}
		require.NoError(t, blockdev.WriteBlock(dev, uint64(i), buf))
	}
	return dev
}

func flipByte(buf []byte)  { buf[200] ^= 1 } // past the fields: the header still reads
func smashHead(buf []byte) { clear(buf[:64]) }

// What a damaged slot means depends on what survives beside it: the
// table covers a torn commit (both slots decode: silent), a damaged copy
// of the last transaction (nothing lost), and a damaged newer
// transaction, named or inferred (a rollback).
func TestADamagedSlotIsToldFromATornCommit(t *testing.T) {
	cases := []struct {
		name    string
		slots   [2]*slotContent
		used    uint64
		damaged int
		lost    bool
		lostTxn uint64
		certain bool
	}{
		{"a torn commit leaves the older superblock in its slot", [2]*slotContent{{txn: 7}, {txn: 6, flags: FlagMirror}}, 7, -1, false, 0, false},
		{"a clean close, either slot readable", [2]*slotContent{{txn: 7, flags: FlagSettled}, {txn: 7, flags: FlagMirror | FlagSettled}}, 7, -1, false, 0, false},
		{"the primary of a cleanly closed pool zeroed", [2]*slotContent{nil, {txn: 7, flags: FlagMirror | FlagSettled}}, 7, 0, false, 0, false},
		{"the copy of a cleanly closed pool zeroed", [2]*slotContent{{txn: 7, flags: FlagSettled}, nil}, 7, 1, false, 0, false},
		{"the primary zeroed after its copy was written", [2]*slotContent{nil, {txn: 7, flags: FlagMirror}}, 7, 0, false, 0, false},
		{"the damaged slot still names an older transaction", [2]*slotContent{{txn: 7}, {txn: 6, raw: flipByte}}, 7, 1, false, 0, false},
		{"the damaged slot still names the newer transaction", [2]*slotContent{{txn: 8, raw: flipByte}, {txn: 7}}, 7, 0, true, 8, true},
		{"a newer transaction zeroed before its copy reached the disk", [2]*slotContent{{txn: 7}, nil}, 7, 1, true, 8, false},
		{"the header of the newer slot destroyed", [2]*slotContent{{txn: 8, raw: smashHead}, {txn: 7}}, 7, 0, true, 8, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sb, _, r, err := ReadSuperblocks(writeSlots(t, c.slots))
			require.NoError(t, err)
			assert.Equal(t, c.used, sb.TxnID)
			assert.Zero(t, sb.Flags&slotFlags, "slot flags are not the pool's")
			assert.Equal(t, c.damaged, r.Damaged)
			assert.Equal(t, c.lost, r.Lost, r.String())
			assert.Equal(t, c.lostTxn, r.LostTxn)
			assert.Equal(t, c.certain, r.Certain)
			if c.lost {
				assert.Contains(t, r.String(), "would lose transaction")
			} else if c.damaged >= 0 {
				assert.Contains(t, r.String(), "nothing is lost")
			}
		})
	}
}

// A commit leaves a copy of itself over the other slot, a clean close
// settles both, and after either the newest superblock can be lost
// without losing its transaction.
func TestBothSlotsEndUpHoldingTheLastTransaction(t *testing.T) {
	dev := blockdev.NewMem()
	require.NoError(t, dev.Truncate(8*blockdev.BlockSize))
	require.NoError(t, Format(dev, Superblock{DataBlockSize: 65536, DataBlocks: 10}))
	m, err := Open(dev, 16)
	require.NoError(t, err)
	assert.Equal(t, -1, m.Recovery().Damaged, "a fresh pool has both slots")
	require.NoError(t, m.Commit(m.Superblock()))
	require.NoError(t, m.Commit(m.Superblock()))
	require.NoError(t, m.Settle())
	for slot := 0; slot < 2; slot++ {
		buf := make([]byte, blockdev.BlockSize)
		require.NoError(t, blockdev.ReadBlock(dev, uint64(slot), buf))
		s, err := DecodeSuperblock(buf)
		require.NoError(t, err)
		assert.Equal(t, uint64(3), s.TxnID)
		assert.NotZero(t, s.Flags&FlagSettled)
		require.NoError(t, blockdev.WriteBlock(dev, uint64(slot), make([]byte, blockdev.BlockSize)))
		m, err := Open(dev, 16)
		require.NoError(t, err)
		assert.Equal(t, uint64(3), m.Superblock().TxnID)
		assert.False(t, m.Recovery().Lost)
		// The next commit writes over the damaged slot, never the good one.
		require.NoError(t, m.Commit(m.Superblock()))
		require.NoError(t, m.Settle())
		require.NoError(t, blockdev.WriteBlock(dev, uint64(slot), buf))
		m, err = Open(dev, 16)
		require.NoError(t, err)
		assert.Equal(t, uint64(4), m.Superblock().TxnID, "the newer commit is kept")
		require.NoError(t, m.Settle())
		// Back to 3 for the other slot's turn.
		(&Superblock{TxnID: 3, DataBlockSize: 65536, DataBlocks: 10, Flags: FlagSettled}).encode(buf)
		require.NoError(t, blockdev.WriteBlock(dev, 0, buf))
		(&Superblock{TxnID: 3, DataBlockSize: 65536, DataBlocks: 10, Flags: FlagSettled | FlagMirror}).encode(buf)
		require.NoError(t, blockdev.WriteBlock(dev, 1, buf))
	}
}
