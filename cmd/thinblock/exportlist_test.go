package main

import (
	"io"
	"log"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// countingDevice counts the reads that reach a device: with the pool's
// metadata cache at its smallest, the metadata blocks a call touches.
type countingDevice struct {
	blockdev.Device
	reads atomic.Int64
}

func (d *countingDevice) ReadAt(p []byte, off int64) (int, error) {
	d.reads.Add(1)
	return d.Device.ReadAt(p, off)
}

// poolWithMappings makes a pool of volume 1, mapped blocks of it
// written, and snapshots 2 to volumes of it, committed and reopened
// with a metadata cache of 16 blocks, so a call's reads are counted on
// the returned device.
func poolWithMappings(t *testing.T, volumes, mapped uint64) (*thinblock.Pool, *countingDevice) {
	t.Helper()
	const bs = thinblock.MinBlockSize
	meta := &countingDevice{Device: blockdev.NewMem()}
	data := blockdev.NewNull(int64(mapped+1) * bs)
	opts := thinblock.Options{CommitInterval: -1, CacheBlocks: 16}
	p, err := thinblock.Create(meta, data, thinblock.CreateOptions{BlockSize: bs}, opts)
	require.NoError(t, err)
	require.NoError(t, p.CreateVolume(1, (mapped+1)*bs))
	v, err := p.Volume(1)
	require.NoError(t, err)
	for b := uint64(0); b < mapped; b++ {
		_, err := v.WriteAt([]byte("x"), int64(b*bs))
		require.NoError(t, err)
	}
	for id := uint64(2); id <= volumes; id++ {
		require.NoError(t, p.Snapshot(id, 1))
	}
	require.NoError(t, p.Close())
	p, err = thinblock.Open(meta, data, opts)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p, meta
}

// Choosing an export (NBD_OPT_GO, EXPORT_NAME, INFO and LIST all list
// the exports) reads the device and attribute trees, not the mappings:
// a few metadata blocks whether the volumes map one block or thousands. Issue 14: every open walked every mapping of every volume.
func TestListingTheExportsReadsNoMappings(t *testing.T) {
	const volumes = 21
	logger := log.New(io.Discard, "", 0)
	reads := map[uint64]int64{}
	for _, mapped := range []uint64{1, 3000} {
		p, meta := poolWithMappings(t, volumes, mapped)
		// ls walks every volume's mappings; the counter sees it, and the
		// walk leaves the small cache holding mapping blocks, not the
		// device tree.
		meta.reads.Store(0)
		_, err := p.Volumes()
		require.NoError(t, err)
		walked := meta.reads.Load()
		if mapped > 1 {
			assert.Greater(t, walked, int64(10*volumes), "ls walks every volume's mappings")
		}

		meta.reads.Store(0)
		got := exports(p, exportOptions{}, logger)()
		reads[mapped] = meta.reads.Load()
		require.Len(t, got, volumes)
		assert.Equal(t, "21", got[volumes-1].Name)
		t.Logf("%d mapped blocks a volume: listing the exports read %d metadata blocks, ls %d", mapped, reads[mapped], walked)
	}
	for mapped, n := range reads {
		assert.LessOrEqual(t, n, int64(volumes), "%d mapped blocks a volume: at most one metadata block per volume", mapped)
	}
}
