package btree

import (
	"encoding/binary"
	"fmt"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// Node layout in a 4 KiB block (little endian):
//
//	0  checksum    crc32c of bytes 4..4095
//	4  magic
//	8  block number (detects misplaced writes)
//	16 flags       1 = leaf
//	20 entries
//	24 value size
//	28 reserved
//	32 keys[capacity] then values[capacity]
const (
	nodeMagic  = 0x62747265 // "btre"
	nodeSalt   = 0x6e0de5
	headerSize = 32
	leafFlag   = 1
)

// capacity is how many entries fit in a node with values of valueSize.
func capacity(valueSize int) int {
	return (blockdev.BlockSize - headerSize) / (8 + valueSize)
}

// node is a decoded B-tree node. Internal nodes hold child block numbers
// as 8-byte values; keys[i] is the lowest key of child i's subtree.
type node struct {
	nr   uint64
	leaf bool
	keys []uint64
	vals [][]byte
}

func (n *node) child(i int) uint64 { return binary.LittleEndian.Uint64(n.vals[i]) }

func childValue(b uint64) []byte {
	v := make([]byte, 8)
	binary.LittleEndian.PutUint64(v, b)
	return v
}

func (n *node) encode(buf []byte, valueSize int) {
	clear(buf[:blockdev.BlockSize])
	le := binary.LittleEndian
	le.PutUint32(buf[4:], nodeMagic)
	le.PutUint64(buf[8:], n.nr)
	if n.leaf {
		le.PutUint32(buf[16:], leafFlag)
	}
	le.PutUint32(buf[20:], uint32(len(n.keys)))
	le.PutUint32(buf[24:], uint32(valueSize))
	capa := capacity(valueSize)
	for i, k := range n.keys {
		le.PutUint64(buf[headerSize+8*i:], k)
		copy(buf[headerSize+8*capa+valueSize*i:], n.vals[i])
	}
	blockdev.Seal(buf, nodeSalt)
}

// checkNode verifies a node block's magic, checksum and location.
func checkNode(nr uint64, buf []byte) error {
	if len(buf) < blockdev.BlockSize {
		return fmt.Errorf("btree node %d: short block", nr)
	}
	le := binary.LittleEndian
	if m := le.Uint32(buf[4:]); m != nodeMagic {
		return fmt.Errorf("btree node %d: wrong magic %#x", nr, m)
	}
	if !blockdev.Verify(buf, nodeSalt) {
		return fmt.Errorf("btree node %d: checksum mismatch", nr)
	}
	if got := le.Uint64(buf[8:]); got != nr {
		return fmt.Errorf("btree node %d: block claims to be %d", nr, got)
	}
	return nil
}

// header reads a node's shape, checking it against the tree's value
// size: whether it is a leaf, its entry count and its value size.
func header(nr uint64, buf []byte, wantValueSize int) (leaf bool, count, valueSize int, err error) {
	le := binary.LittleEndian
	leaf = le.Uint32(buf[16:])&leafFlag != 0
	valueSize = int(le.Uint32(buf[24:]))
	want := 8
	if leaf {
		want = wantValueSize
	}
	if valueSize != want {
		return false, 0, 0, fmt.Errorf("btree node %d: value size %d, want %d", nr, valueSize, want)
	}
	count = int(le.Uint32(buf[20:]))
	if count > capacity(valueSize) {
		return false, 0, 0, fmt.Errorf("btree node %d: %d entries, capacity %d", nr, count, capacity(valueSize))
	}
	return leaf, count, valueSize, nil
}

// parseNode decodes a node whose checksum was already checked. Values
// share one allocation.
func parseNode(nr uint64, buf []byte, wantValueSize int) (*node, error) {
	leaf, count, valueSize, err := header(nr, buf, wantValueSize)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	capa := capacity(valueSize)
	n := &node{nr: nr, leaf: leaf, keys: make([]uint64, count, count+1), vals: make([][]byte, count, count+1)}
	slab := make([]byte, count*valueSize)
	copy(slab, buf[headerSize+8*capa:headerSize+8*capa+count*valueSize])
	for i := 0; i < count; i++ {
		n.keys[i] = le.Uint64(buf[headerSize+8*i:])
		n.vals[i] = slab[i*valueSize : (i+1)*valueSize : (i+1)*valueSize]
		if i > 0 && n.keys[i] <= n.keys[i-1] {
			return nil, fmt.Errorf("btree node %d: keys out of order at %d", nr, i)
		}
	}
	return n, nil
}

// decodeNode parses block nr; wantValueSize is the tree's leaf value size.
// Corrupt input gives an error, never a panic.
func decodeNode(nr uint64, buf []byte, wantValueSize int) (*node, error) {
	if err := checkNode(nr, buf); err != nil {
		return nil, err
	}
	return parseNode(nr, buf, wantValueSize)
}

// searchRaw finds, in an encoded node, the index of the last key <= key
// (-1 if none) without decoding the node.
func searchRaw(buf []byte, count int, key uint64) int {
	le := binary.LittleEndian
	lo, hi := 0, count // keys[lo-1] <= key < keys[hi]
	for lo < hi {
		mid := (lo + hi) / 2
		if le.Uint64(buf[headerSize+8*mid:]) <= key {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo - 1
}

// Node is a decoded node, for the checker.
type Node struct {
	Leaf   bool
	Keys   []uint64
	Values [][]byte // child block numbers (8 bytes) in internal nodes
}

// Child returns the i-th child block of an internal node.
func (n *Node) Child(i int) uint64 { return binary.LittleEndian.Uint64(n.Values[i]) }

// Decode parses block nr of a tree whose leaves hold valueSize-byte
// values, checking magic, checksum, location, size and key order.
func Decode(nr uint64, buf []byte, valueSize int) (*Node, error) {
	n, err := decodeNode(nr, buf, valueSize)
	if err != nil {
		return nil, err
	}
	return &Node{Leaf: n.leaf, Keys: n.keys, Values: n.vals}, nil
}
