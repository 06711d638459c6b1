package btree

import (
	"encoding/binary"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// An insert usually lands in nodes an earlier insert of the same
// transaction already shadowed: after a snapshot, the first write to
// each leaf copies the path, and the next few hundred writes to that leaf
// find every node on it already theirs. Shadowing those nodes again
// would copy, decode, re-encode and copy each one per insert; changing
// the encoded blocks where they lie costs a few shifted entries and a
// checksum.
//
// A node may change in place only when the transaction owns it outright
// (txn.Manager.Owns: fresh and referenced once) AND so does every node
// above it on the path from the root: a node whose own count is 1 is
// still shared when a shared parent points at it (a clone shares the
// root, whose children keep a count of 1 until the root is shadowed).
// Anything else, and any insert that must split a node, takes the
// shadowing path (insert), which is correct in every case.

// maxInPlaceDepth bounds the path the in-place insert follows; deeper
// trees (never seen: 64 levels of 254-way nodes) take the shadowing path.
const maxInPlaceDepth = 16

// pathStep is one node on the path to a key and the entry taken there.
type pathStep struct {
	b uint64
	i int
}

// insertInPlace sets key to value by changing the nodes of the path in
// place. It reports done=false, having changed nothing, when the path is
// not wholly the transaction's own or the leaf is full; the caller then
// shadows.
func (t *Tree) insertInPlace(root, key uint64, value []byte) (done bool, old []byte, err error) {
	var path [maxInPlaceDepth]pathStep
	depth := 0
	leafExists := false
	for b := root; ; {
		if depth == len(path) || !t.tm.Owns(b) {
			return false, nil, nil
		}
		buf, err := t.view(b)
		if err != nil {
			return false, nil, err
		}
		leaf, count, vs, err := header(b, buf, t.valueSize)
		if err != nil {
			return false, nil, err
		}
		i := searchRaw(buf, count, key)
		if leaf {
			leafExists = i >= 0 && keyAt(buf, i) == key
			if !leafExists && count >= capacity(vs) {
				return false, nil, nil // a split: shadowing path
			}
			path[depth] = pathStep{b, i}
			depth++
			break
		}
		if count == 0 {
			return false, nil, nil
		}
		// The child whose range holds key; a key below every other
		// goes to the first child, whose lowest key it becomes.
		i = max(i, 0)
		path[depth] = pathStep{b, i}
		depth++
		b = binary.LittleEndian.Uint64(buf[valueOffset(8, i):])
	}
	verify := func(b uint64) func([]byte) error {
		return func(buf []byte) error { return checkNode(b, buf) }
	}
	// The leaf, then the keys above it that must come down to key. Each
	// block is changed and sealed before the next call into the
	// Manager, as Modify requires.
	leaf := path[depth-1]
	buf, err := t.tm.Modify(leaf.b, verify(leaf.b))
	if err != nil {
		return false, nil, err
	}
	le := binary.LittleEndian
	if leafExists {
		at := valueOffset(t.valueSize, leaf.i)
		old = append([]byte(nil), buf[at:at+t.valueSize]...)
		copy(buf[at:], value)
	} else {
		count := int(le.Uint32(buf[20:]))
		pos := leaf.i + 1
		keys := headerSize
		copy(buf[keys+8*(pos+1):keys+8*(count+1)], buf[keys+8*pos:keys+8*count])
		le.PutUint64(buf[keys+8*pos:], key)
		copy(buf[valueOffset(t.valueSize, pos+1):valueOffset(t.valueSize, count+1)],
			buf[valueOffset(t.valueSize, pos):valueOffset(t.valueSize, count)])
		copy(buf[valueOffset(t.valueSize, pos):], value)
		le.PutUint32(buf[20:], uint32(count+1))
	}
	blockdev.Seal(buf, nodeSalt)
	for d := depth - 2; d >= 0; d-- {
		s := path[d]
		if s.i != 0 {
			continue // keys[0] <= keys[i] <= key
		}
		view, err := t.view(s.b)
		if err != nil {
			return true, nil, err
		}
		if keyAt(view, 0) <= key {
			continue
		}
		if buf, err = t.tm.Modify(s.b, verify(s.b)); err != nil {
			return true, nil, err
		}
		le.PutUint64(buf[headerSize:], key)
		blockdev.Seal(buf, nodeSalt)
	}
	return true, old, nil
}

// keyAt is the i-th key of an encoded node.
func keyAt(buf []byte, i int) uint64 {
	return binary.LittleEndian.Uint64(buf[headerSize+8*i:])
}

// valueOffset is where the i-th value of a node with values of
// valueSize bytes starts.
func valueOffset(valueSize, i int) int {
	return headerSize + 8*capacity(valueSize) + valueSize*i
}
