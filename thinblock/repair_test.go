package thinblock_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/btree"
	"github.com/unionmount/unionmount/thinblock/txn"
)

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

// Finding 5 of issue 14: a mapping changed behind the pool's back, its
// node resealed, makes the space map disagree; repair cannot tell which
// is wrong, so it changes nothing, names the mapping, and fails, unless
// told to trust the mappings.
func TestRepairDoesNotVouchForARedirectedMapping(t *testing.T) {
	mp := newMemPool(t, 64, thinblock.Options{CommitInterval: -1})
	p := mp.pool
	require.NoError(t, p.CreateVolume(1, 4*testBlock))
	v, err := p.Volume(1)
	require.NoError(t, err)
	_, err = v.WriteAt(bytes.Repeat([]byte{0xaa}, testBlock), 0)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	vb, from := redirectMapping(t, mp.meta, 1, 40)
	before := append([]byte(nil), devBytes(t, mp.meta)...)

	report, err := thinblock.RepairSpaceMap(mp.meta, mp.data, thinblock.Options{CommitInterval: -1}, false)
	require.ErrorIs(t, err, thinblock.ErrUnverified)
	require.Len(t, report.Unverified, 1)
	u := report.Unverified[0]
	assert.Equal(t, thinblock.Unverified{Volume: 1, Block: vb, DataBlock: 40, Stored: 0, Mapped: 1}, u)
	assert.Equal(t, []uint64{from}, report.Freed, "where the old data is")
	assert.False(t, report.Rebuilt)
	assert.Equal(t, before, devBytes(t, mp.meta), "nothing changed")

	report, err = thinblock.RepairSpaceMap(mp.meta, mp.data, thinblock.Options{CommitInterval: -1}, true)
	require.NoError(t, err)
	assert.True(t, report.Rebuilt)
	assert.Len(t, report.Unverified, 1, "what was trusted is still said")
}

func devBytes(t *testing.T, d blockdev.Device) []byte {
	size, err := d.Size()
	require.NoError(t, err)
	b := make([]byte, size)
	_, err = d.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}
