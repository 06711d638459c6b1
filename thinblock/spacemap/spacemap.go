// Package spacemap keeps the reference count of every data block of a
// thin pool: how many mapping-tree leaves point at it. Counts live in
// refcount blocks (1016 counts each) indexed by a B-tree, both shadowed
// like all metadata. A block freed in a transaction stays reserved until
// the commit, since the committed mappings may still point at it; one
// first used in this transaction is free again at once. A block can also
// be reserved for a write that has yet to map it: no other allocation
// gets it, and no commit records it as used.
package spacemap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/btree"
	"github.com/unionmount/unionmount/thinblock/txn"
)

const (
	countMagic     = 0x726663 // "rfc"
	countSalt      = 0x5ace
	countHeader    = 32
	countsPerBlock = (blockdev.BlockSize - countHeader) / 4
)

// ErrNoSpace is returned when no data block is free.
var ErrNoSpace = fmt.Errorf("thin pool is out of data space: %w", syscall.ENOSPC)

// Map is the data space map.
type Map struct {
	tm     *txn.Manager
	index  *btree.Tree
	root   uint64
	blocks uint64 // data blocks in the pool
	free   uint64 // blocks with count 0 (pending ones included)
	// fresh are data blocks first referenced in this transaction; they
	// can be reused at once when freed again.
	fresh   map[uint64]bool
	pending map[uint64]bool
	// reserved are blocks handed out by Reserve and not yet claimed or
	// released; their count is still 0.
	reserved map[uint64]bool
	cursor   uint64
	// freed are the blocks whose count reached zero in this transaction
	// (some may be in use again by its end), for TakeFreed.
	freed map[uint64]bool
}

// Create makes an empty space map for blocks data blocks.
func Create(tm *txn.Manager, blocks uint64) (*Map, error) {
	idx := btree.New(tm, 8, nil)
	root, err := idx.Empty()
	if err != nil {
		return nil, err
	}
	return &Map{tm: tm, index: idx, root: root, blocks: blocks, free: blocks,
		fresh: map[uint64]bool{}, pending: map[uint64]bool{}, reserved: map[uint64]bool{}}, nil
}

// OpenCounted loads the space map at root whose free block count is
// known (recorded at the commit), without reading its counts.
func OpenCounted(tm *txn.Manager, root, blocks, free uint64) (*Map, error) {
	if free > blocks {
		return nil, fmt.Errorf("space map: %d free blocks recorded of %d", free, blocks)
	}
	return &Map{tm: tm, index: btree.New(tm, 8, nil), root: root, blocks: blocks, free: free,
		fresh: map[uint64]bool{}, pending: map[uint64]bool{}, reserved: map[uint64]bool{}}, nil
}

// Open loads the space map at root and counts its free blocks.
func Open(tm *txn.Manager, root, blocks uint64) (*Map, error) {
	m := &Map{tm: tm, index: btree.New(tm, 8, nil), root: root, blocks: blocks,
		fresh: map[uint64]bool{}, pending: map[uint64]bool{}, reserved: map[uint64]bool{}}
	used := uint64(0)
	err := m.index.Walk(root, 0, ^uint64(0), func(i uint64, v []byte) (bool, error) {
		counts, err := m.readCounts(binary.LittleEndian.Uint64(v), i)
		if err != nil {
			return false, err
		}
		for j, c := range counts {
			if c != 0 {
				if b := i*countsPerBlock + uint64(j); b >= blocks {
					return false, fmt.Errorf("space map: data block %d in use past the pool's end (%d)", b, blocks)
				}
				used++
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	m.free = blocks - used
	return m, nil
}

// VisitNodes reports every metadata block of the map, for the reference
// recount at open.
func VisitNodes(tm *txn.Manager, root uint64, visit func(b uint64) (bool, error)) error {
	return btree.New(tm, 8, nil).VisitNodes(root, visit, func(_ uint64, v []byte) error {
		_, err := visit(binary.LittleEndian.Uint64(v))
		return err
	})
}

// Root is the index root to record in the superblock.
func (m *Map) Root() uint64 { return m.root }

// Blocks is the number of data blocks.
func (m *Map) Blocks() uint64 { return m.blocks }

// Free is the number of free data blocks (including those freed in this
// transaction, which become usable at the commit).
func (m *Map) Free() uint64 { return m.free }

func (m *Map) readCounts(b, index uint64) ([]uint32, error) {
	buf, err := m.tm.Read(b)
	if err != nil {
		return nil, err
	}
	return DecodeCounts(b, index, buf)
}

// DecodeCounts parses refcount block b holding counts for index i.
func DecodeCounts(b, i uint64, buf []byte) ([]uint32, error) {
	le := binary.LittleEndian
	if len(buf) < blockdev.BlockSize || le.Uint32(buf[4:]) != countMagic {
		return nil, fmt.Errorf("space map block %d: wrong magic", b)
	}
	if !blockdev.Verify(buf, countSalt) {
		return nil, fmt.Errorf("space map block %d: checksum mismatch", b)
	}
	if le.Uint64(buf[8:]) != b || le.Uint64(buf[16:]) != i {
		return nil, fmt.Errorf("space map block %d: misplaced (claims block %d, index %d)", b, le.Uint64(buf[8:]), le.Uint64(buf[16:]))
	}
	counts := make([]uint32, countsPerBlock)
	for j := range counts {
		counts[j] = le.Uint32(buf[countHeader+4*j:])
	}
	return counts, nil
}

func encodeCounts(b, i uint64, counts []uint32) []byte {
	buf := make([]byte, blockdev.BlockSize)
	le := binary.LittleEndian
	le.PutUint32(buf[4:], countMagic)
	le.PutUint64(buf[8:], b)
	le.PutUint64(buf[16:], i)
	for j, c := range counts {
		le.PutUint32(buf[countHeader+4*j:], c)
	}
	blockdev.Seal(buf, countSalt)
	return buf
}

// counts returns the counts holding data block d (zeros if none yet).
func (m *Map) counts(i uint64) ([]uint32, uint64, error) {
	v, found, err := m.index.Lookup(m.root, i)
	if err != nil || !found {
		return make([]uint32, countsPerBlock), 0, err
	}
	b := binary.LittleEndian.Uint64(v)
	c, err := m.readCounts(b, i)
	return c, b, err
}

// view returns the encoded refcount block for index i (0 if it has none
// yet), its checksum and placement checked once per cache load.
func (m *Map) view(i uint64) ([]byte, uint64, error) {
	v, found, err := m.index.Lookup(m.root, i)
	if err != nil || !found {
		return nil, 0, err
	}
	b := binary.LittleEndian.Uint64(v)
	buf, err := m.tm.View(b, func(buf []byte) error {
		_, err := DecodeCounts(b, i, buf)
		return err
	})
	return buf, b, err
}

func countAt(buf []byte, j uint64) uint32 {
	return binary.LittleEndian.Uint32(buf[countHeader+4*j:])
}

// Get returns data block d's count.
func (m *Map) Get(d uint64) (uint32, error) {
	if d >= m.blocks {
		return 0, fmt.Errorf("data block %d past the pool's end (%d)", d, m.blocks)
	}
	buf, _, err := m.view(d / countsPerBlock)
	if err != nil || buf == nil {
		return 0, err
	}
	return countAt(buf, d%countsPerBlock), nil
}

// set changes d's count through fn, shadowing its refcount block unless
// this transaction already did.
func (m *Map) set(d uint64, fn func(uint32) (uint32, error)) (uint32, error) {
	if d >= m.blocks {
		return 0, fmt.Errorf("data block %d past the pool's end (%d)", d, m.blocks)
	}
	i, j := d/countsPerBlock, d%countsPerBlock
	cur, b, err := m.view(i)
	if err != nil {
		return 0, err
	}
	var old uint32
	if cur != nil {
		old = countAt(cur, j)
	}
	nc, err := fn(old)
	if err != nil {
		return 0, err
	}
	if b != 0 && m.tm.Owns(b) {
		// Already this transaction's copy (refcount blocks are never
		// shared): change it where it lies.
		buf, err := m.tm.Modify(b, func(buf []byte) error {
			_, err := DecodeCounts(b, i, buf)
			return err
		})
		if err != nil {
			return 0, err
		}
		binary.LittleEndian.PutUint32(buf[countHeader+4*j:], nc)
		blockdev.Seal(buf, countSalt)
		m.countChanged(old, nc)
		return nc, nil
	}
	buf := make([]byte, blockdev.BlockSize)
	if cur != nil {
		copy(buf, cur)
	}
	nb := b
	if b == 0 || !m.tm.IsFresh(b) {
		if nb, err = m.tm.Alloc(); err != nil {
			return 0, err
		}
		if b != 0 {
			if _, err := m.tm.Dec(b); err != nil {
				return 0, err
			}
		}
		root, _, err := m.index.Insert(m.root, i, binary.LittleEndian.AppendUint64(nil, nb))
		if err != nil {
			return 0, err
		}
		m.root = root
	}
	le := binary.LittleEndian
	le.PutUint32(buf[4:], countMagic)
	le.PutUint64(buf[8:], nb)
	le.PutUint64(buf[16:], i)
	le.PutUint32(buf[countHeader+4*j:], nc)
	blockdev.Seal(buf, countSalt)
	if err := m.tm.Write(nb, buf); err != nil {
		return 0, err
	}
	m.countChanged(old, nc)
	return nc, nil
}

// countChanged keeps the free count as a block's count goes from old to nc.
func (m *Map) countChanged(old, nc uint32) {
	switch {
	case old == 0 && nc > 0:
		m.free--
	case old > 0 && nc == 0:
		m.free++
	}
}

// CountsPerBlock is how many data blocks one refcount block covers.
const CountsPerBlock = countsPerBlock

// SetCount sets data block d's count outright (for a rebuild).
func (m *Map) SetCount(d uint64, c uint32) error {
	_, err := m.set(d, func(uint32) (uint32, error) { return c, nil })
	return err
}

// Inc adds a reference to data block d.
func (m *Map) Inc(d uint64) error {
	_, err := m.set(d, func(c uint32) (uint32, error) {
		if c == ^uint32(0) {
			return 0, errors.New("reference count overflow")
		}
		return c + 1, nil
	})
	return err
}

// Dec drops a reference to data block d. A block whose count reaches
// zero is free at once if it was first used in this transaction, and at
// the commit otherwise.
func (m *Map) Dec(d uint64) error {
	nc, err := m.set(d, func(c uint32) (uint32, error) {
		if c == 0 {
			return 0, fmt.Errorf("reference count of data block %d would go below zero", d)
		}
		return c - 1, nil
	})
	if err == nil && nc == 0 {
		if m.freed == nil {
			m.freed = map[uint64]bool{}
		}
		m.freed[d] = true
		if m.fresh[d] {
			delete(m.fresh, d)
		} else {
			m.pending[d] = true
		}
	}
	return err
}

// Alloc finds a free data block and gives it one reference.
func (m *Map) Alloc() (uint64, error) {
	d, err := m.Reserve()
	if err != nil {
		return 0, err
	}
	return d, m.Claim(d)
}

// Claim gives reserved block d its first reference.
func (m *Map) Claim(d uint64) error {
	if !m.reserved[d] {
		return fmt.Errorf("data block %d was not reserved", d)
	}
	if err := m.Inc(d); err != nil {
		return err
	}
	delete(m.reserved, d)
	m.fresh[d] = true
	return nil
}

// Release gives back reserved block d unused.
func (m *Map) Release(d uint64) {
	delete(m.reserved, d)
}

// Reserve finds a free data block and holds it, unreferenced, until
// Claim or Release: no other Reserve or Alloc returns it meanwhile.
func (m *Map) Reserve() (uint64, error) {
	if m.free <= uint64(len(m.pending)+len(m.reserved)) {
		return 0, ErrNoSpace
	}
	for scanned := uint64(0); scanned < m.blocks; {
		d := m.cursor % m.blocks
		i := d / countsPerBlock
		// The cached block, read in place: nil when the index has no
		// block for i yet (all its counts are 0).
		buf, _, err := m.view(i)
		if err != nil {
			return 0, err
		}
		for j := d % countsPerBlock; j < countsPerBlock; j++ {
			cand := i*countsPerBlock + j
			if cand >= m.blocks {
				break
			}
			scanned++
			if (buf == nil || countAt(buf, j) == 0) && !m.pending[cand] && !m.reserved[cand] {
				m.cursor = cand + 1
				m.reserved[cand] = true
				return cand, nil
			}
		}
		next := (i + 1) * countsPerBlock
		if next >= m.blocks {
			next = 0
		}
		m.cursor = next
	}
	return 0, ErrNoSpace
}

// Committed releases the blocks freed in the transaction just committed
// (reservations stay).
func (m *Map) Committed() {
	m.pending = map[uint64]bool{}
	m.fresh = map[uint64]bool{}
}

// Resize changes the number of data blocks. Shrinking below a block in
// use fails.
func (m *Map) Resize(blocks uint64) error {
	if blocks < m.blocks {
		for d := blocks; d < m.blocks; d++ {
			c, err := m.Get(d)
			if err != nil {
				return err
			}
			if c != 0 || m.reserved[d] {
				return fmt.Errorf("cannot shrink: data block %d is in use", d)
			}
		}
		m.free -= m.blocks - blocks
	} else {
		m.free += blocks - m.blocks
	}
	m.blocks = blocks
	return nil
}
