package spacemap

import (
	"slices"
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
		counts, err := DecodeCounts(b, i, data)
		if err != nil {
			return
		}
		// What decodes encodes back to the same counts.
		again, err := DecodeCounts(b, i, encodeCounts(b, i, counts))
		if err != nil || !slices.Equal(again, counts) {
			t.Fatalf("round trip of the counts of block %d failed: %v", b, err)
		}
	})
}
