package btree

import (
	"bytes"
	"slices"
	"testing"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// FuzzDecodeNode: corrupt nodes give an error, never a panic or a hang.
func FuzzDecodeNode(f *testing.F) {
	buf := make([]byte, blockdev.BlockSize)
	(&node{nr: 5, leaf: true, keys: []uint64{1, 2, 9}, vals: [][]byte{make([]byte, 8), make([]byte, 8), make([]byte, 8)}}).encode(buf, 8)
	f.Add(buf, uint64(5), 8)
	f.Add(make([]byte, blockdev.BlockSize), uint64(0), 48)
	f.Fuzz(func(t *testing.T, data []byte, nr uint64, valueSize int) {
		if valueSize < 1 || valueSize > 512 {
			return
		}
		n, err := decodeNode(nr, data, valueSize)
		if err != nil {
			return
		}
		if len(n.keys) > capacity(valueSize) && n.leaf {
			t.Fatalf("decoded %d entries, capacity %d", len(n.keys), capacity(valueSize))
		}
		for i := 1; i < len(n.keys); i++ {
			if n.keys[i] <= n.keys[i-1] {
				t.Fatal("keys out of order accepted")
			}
		}
		// What decodes encodes back to a node that decodes the same.
		again := make([]byte, blockdev.BlockSize)
		n.encode(again, valueSize)
		m, err := decodeNode(nr, again, valueSize)
		if err != nil {
			t.Fatalf("a decoded node does not decode once re-encoded: %v", err)
		}
		if m.leaf != n.leaf || !slices.Equal(m.keys, n.keys) || len(m.vals) != len(n.vals) {
			t.Fatalf("round trip changed the node: %+v then %+v", n, m)
		}
		for i := range n.vals {
			if !bytes.Equal(m.vals[i], n.vals[i]) {
				t.Fatalf("round trip changed value %d", i)
			}
		}
	})
}

// FuzzDecodeNodeWithValidChecksum reseals fuzzed content so the decoder's
// field checks, not just the checksum, get exercised.
func FuzzDecodeNodeWithValidChecksum(f *testing.F) {
	buf := make([]byte, blockdev.BlockSize)
	(&node{nr: 3, keys: []uint64{1}, vals: [][]byte{make([]byte, 8)}}).encode(buf, 8)
	f.Add(buf[4:64])
	f.Fuzz(func(t *testing.T, head []byte) {
		b := make([]byte, blockdev.BlockSize)
		copy(b[4:], head)
		blockdev.Seal(b, nodeSalt)
		decodeNode(3, b, 8)
		decodeNode(3, b, 48)
	})
}
