package txn

import (
	"testing"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// FuzzDecodeSuperblock: corrupt input gives an error, never a panic.
func FuzzDecodeSuperblock(f *testing.F) {
	good := make([]byte, blockdev.BlockSize)
	(&Superblock{TxnID: 7, DataBlockSize: 65536, DataBlocks: 100, DevicesRoot: 2, DataSMRoot: 3}).encode(good)
	f.Add(good)
	f.Add(make([]byte, blockdev.BlockSize))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, data []byte) {
		buf := make([]byte, blockdev.BlockSize)
		copy(buf, data)
		s, err := DecodeSuperblock(buf)
		if err == nil {
			// What decodes must encode back to the same block.
			again := make([]byte, blockdev.BlockSize)
			s.encode(again)
			if s2, err := DecodeSuperblock(again); err != nil || s2 != s {
				t.Fatalf("round trip: %v", err)
			}
		}
		DecodeSuperblock(data)
	})
}
