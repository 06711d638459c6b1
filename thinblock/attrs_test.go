package thinblock_test

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
)

func volumeByID(t *testing.T, p *thinblock.Pool, id uint64) (thinblock.VolumeInfo, bool) {
	t.Helper()
	vols, err := p.Volumes()
	require.NoError(t, err)
	for _, v := range vols {
		if v.ID == id {
			return v, true
		}
	}
	return thinblock.VolumeInfo{}, false
}

// superVersion reads the format version of the newest superblock slot.
func superVersion(t *testing.T, meta blockdev.Device) uint32 {
	t.Helper()
	buf := make([]byte, blockdev.BlockSize)
	var best uint32
	var bestTxn uint64
	for i := uint64(0); i < 2; i++ {
		require.NoError(t, blockdev.ReadBlock(meta, i, buf))
		if txn := binary.LittleEndian.Uint64(buf[16:]); txn >= bestTxn {
			best, bestTxn = binary.LittleEndian.Uint32(buf[8:]), txn
		}
	}
	return best
}

// A volume's name, read-only flag and origin commit with it: after a
// crash at any commit point the volume is there with exactly its
// attributes, or neither is; after a clean reopen they are all there.
func TestVolumeAttributesCommitWithTheVolume(t *testing.T) {
	for _, point := range thinblock.CrashPoints() {
		t.Run("a crash at "+point, func(t *testing.T) {
			rng := rand.New(rand.NewSource(int64(len(point))))
			armed := false
			opts := thinblock.Options{CommitInterval: -1, Crash: func(p string) error {
				if armed && p == point {
					return errInjected
				}
				return nil
			}}
			mp := newMemPool(t, 64, opts)
			p := mp.pool
			require.NoError(t, p.CreateVolumeWith(1, 4*testBlock, thinblock.Attrs{Name: "base"}))
			require.NoError(t, p.Commit())
			require.NoError(t, p.SnapshotWith(2, 1, thinblock.Attrs{Name: "layer", ReadOnly: true}))
			armed = true
			p.Commit()
			mp.meta.CrashKeeping(func(int64) bool { return rng.Intn(2) == 0 })
			mp.meta, mp.data = mp.meta.Reopen(), mp.data.Reopen()
			armed = false
			np, err := thinblock.Open(mp.meta, mp.data, opts)
			require.NoError(t, err)
			mp.pool = np
			mp.checkClean(t)
			base, ok := volumeByID(t, np, 1)
			require.True(t, ok)
			assert.Equal(t, "base", base.Name)
			if snap, ok := volumeByID(t, np, 2); ok {
				assert.True(t, snap.HasAttrs && snap.ReadOnly && snap.HasOrigin, "%+v", snap)
				assert.Equal(t, "layer", snap.Name)
				assert.Equal(t, uint64(1), snap.Origin)
			}
		})
	}
}

func TestVolumeAttributesAreKeptAndDeleted(t *testing.T) {
	mp := newMemPool(t, 64, thinblock.Options{CommitInterval: -1})
	p := mp.pool
	require.NoError(t, p.CreateVolumeWith(1, 4*testBlock, thinblock.Attrs{Name: "base", ReadOnly: true}))
	require.NoError(t, p.SnapshotWith(2, 1, thinblock.Attrs{Name: "container"}))
	require.NoError(t, p.Snapshot(3, 2))
	for i := uint64(10); i < 400; i++ { // enough entries for a tree of several nodes
		require.NoError(t, p.CreateVolumeWith(i, testBlock, thinblock.Attrs{Name: strings.Repeat("n", int(i%100))}))
	}
	require.NoError(t, p.Close())
	np, err := thinblock.Open(mp.meta, mp.data, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	mp.pool = np
	v, _ := volumeByID(t, np, 1)
	assert.True(t, v.ReadOnly && !v.HasOrigin && v.ExportReadOnly(false))
	v, _ = volumeByID(t, np, 2)
	assert.Equal(t, "container", v.Name)
	assert.False(t, v.ReadOnly || v.ExportReadOnly(false), "a snapshot is writable unless made read-only")
	v, _ = volumeByID(t, np, 3)
	assert.Equal(t, uint64(2), v.Origin)
	v, _ = volumeByID(t, np, 399)
	assert.Equal(t, strings.Repeat("n", 99), v.Name)

	for i := uint64(10); i < 400; i++ {
		require.NoError(t, np.DeleteVolume(i))
	}
	require.NoError(t, np.DeleteVolume(2))
	require.NoError(t, np.Commit())
	// The checker finds no attributes left of a deleted volume.
	mp.checkClean(t)
	// A recreated id starts without the old attributes.
	require.NoError(t, np.CreateVolume(2, testBlock))
	v, _ = volumeByID(t, np, 2)
	assert.Equal(t, "", v.Name)
	require.NoError(t, np.Close())
	mp.checkClean(t)

	// Names are checked.
	assert.Error(t, np.CreateVolumeWith(5, testBlock, thinblock.Attrs{Name: "two words"}))
	assert.Error(t, np.CreateVolumeWith(5, testBlock, thinblock.Attrs{Name: strings.Repeat("x", thinblock.MaxNameLen+1)}))
}

// A pool without attributes (made before they existed, or restored from
// thin_dump's XML) keeps format version 1, opens, and lists its volumes
// without attributes; snapshots of it keep the old rule (read-only
// unless --writable-snapshots). The first volume made with attributes
// moves it to version 2.
func TestAPoolWithoutAttributesOpensAndUpgrades(t *testing.T) {
	meta, data := blockdev.NewMem(), blockdev.NewMem()
	p, err := thinblock.Create(meta, data, thinblock.CreateOptions{BlockSize: testBlock, DataSize: 64 * testBlock}, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	xml := `<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="64">
  <device dev_id="1" mapped_blocks="1" transaction="1" creation_time="0" snap_time="1">
    <single_mapping origin_block="0" data_block="0" time="0"/>
  </device>
</superblock>
`
	require.NoError(t, p.Restore(bytes.NewReader([]byte(xml)), nil))
	require.NoError(t, p.Close())
	assert.Equal(t, uint32(1), superVersion(t, meta), "no attributes: the old format version")
	p, err = thinblock.Open(meta, data, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	v, ok := volumeByID(t, p, 1)
	require.True(t, ok)
	assert.False(t, v.HasAttrs)
	assert.False(t, v.ExportReadOnly(false))
	assert.True(t, thinblock.VolumeBrief{Snapshot: true}.ExportReadOnly(false), "an old snapshot stays read-only by default")
	assert.False(t, thinblock.VolumeBrief{Snapshot: true}.ExportReadOnly(true), "and --writable-snapshots still makes it writable")
	require.NoError(t, p.CreateVolumeWith(2, testBlock, thinblock.Attrs{Name: "new"}))
	require.NoError(t, p.Close())
	assert.Equal(t, uint32(2), superVersion(t, meta))
	r := newMemPoolFrom(t, meta, data)
	r.checkClean(t)
}

func newMemPoolFrom(t *testing.T, meta, data *blockdev.Mem) *memPool {
	t.Helper()
	return &memPool{meta: meta, data: data}
}
