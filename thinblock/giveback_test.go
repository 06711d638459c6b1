package thinblock_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// allocated is the bytes of the file that hold data.
func allocated(t *testing.T, path string) int64 { return fstest.DataBytes(t, path) }

type giveBackPool struct {
	dir        string
	meta, data *blockdev.File
	pool       *thinblock.Pool
}

func openGiveBackPool(t *testing.T, dir string, create bool, opts thinblock.Options) *giveBackPool {
	t.Helper()
	f := &giveBackPool{dir: dir}
	var err error
	f.meta, err = blockdev.OpenFile(filepath.Join(dir, "metadata"), create)
	require.NoError(t, err)
	f.data, err = blockdev.OpenFile(filepath.Join(dir, "data"), create)
	require.NoError(t, err)
	if create {
		f.pool, err = thinblock.Create(f.meta, f.data, thinblock.CreateOptions{DataSize: 512 << 20}, opts)
	} else {
		f.pool, err = thinblock.Open(f.meta, f.data, opts)
	}
	require.NoError(t, err)
	return f
}

func (f *giveBackPool) closeFiles() {
	f.meta.Close()
	f.data.Close()
}

func writePattern(t *testing.T, p *thinblock.Pool, id uint64, n int, b byte) {
	t.Helper()
	v, err := p.Volume(id)
	require.NoError(t, err)
	chunk := bytes.Repeat([]byte{b}, 1<<20)
	for off := 0; off < n; off += len(chunk) {
		_, err := v.WriteAt(chunk, int64(off))
		require.NoError(t, err)
	}
}

func readsPattern(t *testing.T, p *thinblock.Pool, id uint64, off int64, b byte) {
	t.Helper()
	v, err := p.Volume(id)
	require.NoError(t, err)
	got := make([]byte, 64<<10)
	_, err = v.ReadAt(got, off)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{b}, len(got)), got, "volume %d at %d", id, off)
}

// A deleted volume's blocks are punched out of a file-backed data device
// once the commit that frees them is durable, never before: a commit
// that crashes before its superblock leaves the blocks, and the volume,
// whole.
func TestDeletedVolumesGiveTheirSpaceBackOnceCommitted(t *testing.T) {
	dir := t.TempDir()
	dataPath := filepath.Join(dir, "data")
	armed := false
	opts := thinblock.Options{CommitInterval: -1, Crash: func(point string) error {
		if armed && point == txn.CrashBeforeSuperblock {
			return errInjected
		}
		return nil
	}}
	f := openGiveBackPool(t, dir, true, opts)
	p := f.pool
	require.NoError(t, p.CreateVolume(1, 300<<20))
	require.NoError(t, p.CreateVolume(2, 8<<20))
	writePattern(t, p, 1, 256<<20, 0xa1)
	writePattern(t, p, 2, 1<<20, 0xb2)
	require.NoError(t, p.Commit())
	full := allocated(t, dataPath)
	require.GreaterOrEqual(t, full, int64(257<<20))

	require.NoError(t, p.DeleteVolume(1))
	assert.Equal(t, full, allocated(t, dataPath), "nothing is punched before the commit")
	armed = true
	require.ErrorIs(t, p.Commit(), errInjected)
	assert.Equal(t, full, allocated(t, dataPath), "nothing is punched when the commit does not complete")
	f.closeFiles()

	// After the crash the volume is back, with its data.
	armed = false
	f = openGiveBackPool(t, dir, false, opts)
	p = f.pool
	readsPattern(t, p, 1, 0, 0xa1)
	readsPattern(t, p, 1, 200<<20, 0xa1)
	require.NoError(t, p.DeleteVolume(1))
	require.NoError(t, p.Commit())
	after := allocated(t, dataPath)
	// The host filesystem may keep a block of its own extent tree more
	// or less (4 KiB on ext4, seen once): one data block's slack.
	assert.LessOrEqual(t, after, full-int64(256<<20)+64<<10, "the deleted volume's 256 MiB go back to the host (%d -> %d bytes)", full, after)
	readsPattern(t, p, 2, 0, 0xb2)
	st, err := p.Status()
	require.NoError(t, err)
	assert.Equal(t, uint64(16), st.DataBlocks-st.FreeBlocks)

	// Discarded blocks go back the same way.
	v, err := p.Volume(2)
	require.NoError(t, err)
	require.NoError(t, v.Discard(0, 512<<10))
	require.NoError(t, p.Commit())
	assert.LessOrEqual(t, allocated(t, dataPath), after-int64(512<<10))
	readsPattern(t, p, 2, 512<<10, 0xb2)

	require.NoError(t, p.Close())
	r, err := check.Run(f.meta, nil)
	require.NoError(t, err)
	assert.True(t, r.OK(), "%v", r.Errors)
	f.closeFiles()
}

// Trim punches every unused block of an existing pool, and nothing a
// volume maps.
func TestTrimPunchesEveryUnusedBlock(t *testing.T) {
	dir := t.TempDir()
	dataPath := filepath.Join(dir, "data")
	f := openGiveBackPool(t, dir, true, thinblock.Options{CommitInterval: -1})
	p := f.pool
	require.NoError(t, p.CreateVolume(1, 8<<20))
	writePattern(t, p, 1, 2<<20, 0xc3)
	require.NoError(t, p.Commit())
	before := allocated(t, dataPath)
	// Junk in free blocks, as a pool from before space was given back
	// would hold.
	raw, err := os.OpenFile(dataPath, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = raw.WriteAt(bytes.Repeat([]byte{0xff}, 32<<20), 100<<20)
	require.NoError(t, err)
	require.NoError(t, raw.Close())
	require.GreaterOrEqual(t, allocated(t, dataPath), before+int64(32<<20))
	n, err := p.Trim()
	require.NoError(t, err)
	assert.Equal(t, uint64(512<<20/thinblock.DefaultBlockSize-32), n, "every block but the 32 mapped ones")
	assert.LessOrEqual(t, allocated(t, dataPath), before)
	readsPattern(t, p, 1, 0, 0xc3)
	readsPattern(t, p, 1, (2<<20)-(64<<10), 0xc3)
	require.NoError(t, p.Close())
	f.closeFiles()
}
