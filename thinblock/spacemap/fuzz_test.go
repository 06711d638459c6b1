package spacemap

import (
	"testing"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// FuzzDecodeCounts: corrupt refcount blocks give an error, never a panic.
func FuzzDecodeCounts(f *testing.F) {
	f.Add(encodeCounts(4, 0, make([]uint32, countsPerBlock)), uint64(4), uint64(0))
	f.Add(make([]byte, 10), uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, data []byte, b, i uint64) {
		buf := make([]byte, blockdev.BlockSize)
		copy(buf, data)
		DecodeCounts(b, i, buf)
		DecodeCounts(b, i, data)
	})
}
