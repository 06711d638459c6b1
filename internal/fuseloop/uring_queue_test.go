package fuseloop

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseCPUListCountsRangesAndSingles(t *testing.T) {
	for _, c := range []struct {
		list string
		want int
	}{{"0", 1}, {"0-1", 2}, {"0-3,5", 5}, {"0,2,4-7", 6}} {
		got, err := parseCPUList(c.list)
		require.NoError(t, err, c.list)
		assert.Equal(t, c.want, got, c.list)
	}
	for _, bad := range []string{"", "a", "3-1", "0-"} {
		_, err := parseCPUList(bad)
		assert.Error(t, err, bad)
	}
}

// Sizes around a page, max_write (one request) and the payload buffer.
var dataSizes = []int{0, 1, 4095, 4096, 4097, 65536, uringTestMaxWrite - 1, uringTestMaxWrite, uringTestMaxWrite + 1, 3*uringTestMaxWrite + 5, 1<<20 + 17}

func TestURingDataAroundPageAndRequestSizesReadsBackExactly(t *testing.T) {
	m := mountURing(t, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range dataSizes {
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			name := fmt.Sprintf("f%d", size)
			require.NoError(t, os.WriteFile(filepath.Join(m.dir, name), data, 0o644))

			got, err := os.ReadFile(filepath.Join(m.dir, name))
			require.NoError(t, err)
			assert.True(t, bytes.Equal(data, got), "read back through the mount")
			backing, err := os.ReadFile(filepath.Join(m.backing, name))
			require.NoError(t, err)
			assert.True(t, bytes.Equal(data, backing), "what landed in the backing dir")

			st, err := os.Stat(filepath.Join(m.dir, name))
			require.NoError(t, err)
			assert.EqualValues(t, size, st.Size())

			// Reads that start and end off the page and request grid.
			f, err := os.Open(filepath.Join(m.dir, name))
			require.NoError(t, err)
			defer f.Close()
			for _, off := range []int{1, 4095, uringTestMaxWrite - 3} {
				if off >= size {
					continue
				}
				buf := make([]byte, uringTestMaxWrite+7)
				n, _ := f.ReadAt(buf, int64(off))
				assert.Equal(t, data[off:min(size, off+len(buf))], buf[:n], "pread at %d", off)
			}
		})
	}
	assert.NotZero(t, m.served(), "requests went through the rings")
	assert.NotZero(t, m.ringAnswered(fuseOpWrite), "WRITEs went through the rings")
	assert.NotZero(t, m.ringAnswered(fuseOpRead), "READs went through the rings")
	assert.Empty(t, m.devRequests(), "only FORGET and INTERRUPT may come through /dev/fuse once the rings are registered")
}

func TestServerWithTransportIOURingServesThroughTheRings(t *testing.T) {
	requireURing(t)
	m := mountLoopback(t, TransportIOURing)
	require.Equal(t, TransportIOURing, m.server.Transport(), "why not: %s", m.server.WhyNotIOURing())
	assert.Empty(t, m.server.WhyNotIOURing())
	t.Cleanup(func() { requireNoThreadInD(t, os.Getpid()) })

	rng := rand.New(rand.NewPCG(3, 4))
	for _, size := range dataSizes {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("f%d", size)
		require.NoError(t, os.WriteFile(filepath.Join(m.mnt, name), data, 0o644))
		got, err := os.ReadFile(filepath.Join(m.mnt, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(data, got), "%d bytes read back through the mount", size)
		backing, err := os.ReadFile(filepath.Join(m.dir, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(data, backing), "%d bytes landed in the backing dir", size)
	}
	var served uint64
	for _, s := range m.server.uring.Stats() {
		served += s.Served
	}
	assert.Greater(t, served, uint64(2*len(dataSizes)), "the rings answered the requests")
}
