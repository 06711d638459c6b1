// Package check verifies a thin pool's metadata without trusting it:
// both superblock slots (and whether a damaged one means a committed
// transaction would be lost, see txn.Recovery), every B-tree node (checksum, location, key order
// and bounds, balanced depth), that no block serves two structures, each
// volume's mapped-block count, and every data block's reference count
// against a recount from the mapping trees.
//
// It only reads. Repair lives in the pool (thinblock.RepairSpaceMap).
package check

import (
	"encoding/binary"
	"fmt"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/btree"
	"github.com/unionmount/unionmount/thinblock/spacemap"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// maxErrors bounds the problems listed one by one.
const maxErrors = 50

// Report is what a check found.
type Report struct {
	Superblock    txn.Superblock
	Slots         [2]string // "ok (transaction N)" or why the slot is invalid
	Volumes       int
	Mappings      uint64
	DataUsed      uint64
	MetadataUsed  uint64
	Errors        []string
	ErrorCount    int
	SpaceMapWrong uint64 // data blocks whose stored count is wrong
	// Recovery says what a damaged superblock slot means: a rollback
	// (Recovery.Lost) is a problem, a damaged copy with nothing newer
	// lost a warning.
	Recovery txn.Recovery
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return r.ErrorCount == 0 && !r.Recovery.Lost }

// Warnings lists what is damaged without anything being lost.
func (r *Report) Warnings() []string {
	if r.Recovery.Damaged >= 0 && !r.Recovery.Lost {
		return []string{r.Recovery.String()}
	}
	return nil
}

func (r *Report) errorf(format string, args ...any) {
	r.ErrorCount++
	if len(r.Errors) < maxErrors {
		r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
	}
}

type checker struct {
	dev      blockdev.Device
	r        *Report
	blocks   uint64
	kind     map[uint64]string
	dataRefs map[uint64]uint32
	progress func(done, total uint64)
}

// Run checks the metadata on dev. An error means the metadata could not
// be read at all; problems found go in the report.
func Run(dev blockdev.Device, progress func(done, total uint64)) (*Report, error) {
	size, err := dev.Size()
	if err != nil {
		return nil, err
	}
	r := &Report{}
	buf := make([]byte, blockdev.BlockSize)
	for i := 0; i < 2 && int64(i+1)*blockdev.BlockSize <= size; i++ {
		if err := blockdev.ReadBlock(dev, uint64(i), buf); err != nil {
			return nil, err
		}
		if s, err := txn.DecodeSuperblock(buf); err != nil {
			r.Slots[i] = err.Error()
		} else {
			r.Slots[i] = fmt.Sprintf("ok (transaction %d%s)", s.TxnID, slotKind(s.Flags))
		}
	}
	sb, _, rec, err := txn.ReadSuperblocks(dev)
	if err != nil {
		return nil, err
	}
	r.Superblock, r.Recovery = sb, rec
	c := &checker{dev: dev, r: r, blocks: uint64(size) / blockdev.BlockSize, kind: map[uint64]string{},
		dataRefs: map[uint64]uint32{}, progress: progress}
	if sb.DataBlockSize < thinblock.MinBlockSize || sb.DataBlockSize > thinblock.MaxBlockSize || sb.DataBlockSize&(sb.DataBlockSize-1) != 0 {
		r.errorf("superblock: data block size %d is not allowed", sb.DataBlockSize)
	}
	var leafDepth = -1
	volumes := map[uint64]bool{}
	c.tree("device tree", sb.DevicesRoot, thinblock.DetailsValueSize, 0, ^uint64(0), 0, &leafDepth, func(id uint64, v []byte) {
		volumes[id] = true
		c.volume(id, v)
	}, nil)
	if sb.AttrsRoot != 0 {
		attrsDepth := -1
		c.tree("attribute tree", sb.AttrsRoot, thinblock.AttrsValueSize, 0, ^uint64(0), 0, &attrsDepth, func(id uint64, v []byte) {
			if err := thinblock.DecodeAttrs(v); err != nil {
				c.r.errorf("volume %d: %v", id, err)
			}
			if !volumes[id] {
				c.r.errorf("attribute tree: attributes of volume %d, which does not exist", id)
			}
		}, nil)
	}
	c.spaceMap(sb.DataSMRoot)
	r.MetadataUsed = uint64(len(c.kind))
	return r, nil
}

func slotKind(flags uint32) string {
	switch {
	case flags&txn.FlagMirror != 0 && flags&txn.FlagSettled != 0:
		return ", copy, closed cleanly"
	case flags&txn.FlagMirror != 0:
		return ", copy"
	case flags&txn.FlagSettled != 0:
		return ", closed cleanly"
	}
	return ""
}

func (c *checker) read(b uint64) ([]byte, bool) {
	buf := make([]byte, blockdev.BlockSize)
	if err := blockdev.ReadBlock(c.dev, b, buf); err != nil {
		c.r.errorf("block %d: %v", b, err)
		return nil, false
	}
	return buf, true
}

// claim records that block b belongs to a structure of kind, and reports
// whether this is its first reference; shared is set for a later
// reference from the same kind of structure (a shared subtree).
func (c *checker) claim(b uint64, kind string) (first, shared bool) {
	if b < txn.FirstFreeBlock || b >= c.blocks {
		c.r.errorf("%s: reference to block %d outside the metadata (2..%d)", kind, b, c.blocks-1)
		return false, false
	}
	if k, ok := c.kind[b]; ok {
		if k != kind {
			c.r.errorf("block %d is used both as %s and as %s", b, k, kind)
			return false, false
		}
		return false, true
	}
	c.kind[b] = kind
	if c.progress != nil && len(c.kind)%1024 == 0 {
		c.progress(uint64(len(c.kind)), c.blocks)
	}
	return true, false
}

// tree checks the B-tree at b, whose keys must lie in [lo, hi); leaf is
// called once per entry of each distinct leaf, and shared (if not nil)
// for each further reference to an already checked subtree.
func (c *checker) tree(kind string, b uint64, valueSize int, lo, hi uint64, depth int, leafDepth *int,
	leaf func(k uint64, v []byte), shared func(b uint64)) {
	first, again := c.claim(b, kind)
	if again && shared != nil {
		shared(b)
	}
	if !first {
		return
	}
	buf, ok := c.read(b)
	if !ok {
		return
	}
	n, err := btree.Decode(b, buf, valueSize)
	if err != nil {
		c.r.errorf("%s: %v", kind, err)
		return
	}
	for i, k := range n.Keys {
		if k < lo || k >= hi {
			c.r.errorf("%s: node %d key %d outside its parent's range [%d, %d)", kind, b, k, lo, hi)
		}
		if n.Leaf {
			leaf(k, n.Values[i])
			continue
		}
		next := hi
		if i+1 < len(n.Keys) {
			next = n.Keys[i+1]
		}
		c.tree(kind, n.Child(i), valueSize, k, next, depth+1, leafDepth, leaf, shared)
	}
	if n.Leaf {
		if *leafDepth < 0 {
			*leafDepth = depth
		} else if *leafDepth != depth {
			c.r.errorf("%s: leaf %d at depth %d, others at %d (unbalanced)", kind, b, depth, *leafDepth)
		}
	} else if len(n.Keys) == 0 {
		c.r.errorf("%s: internal node %d is empty", kind, b)
	}
}

func (c *checker) volume(id uint64, v []byte) {
	c.r.Volumes++
	d, err := thinblock.DecodeDeviceDetails(v)
	if err != nil {
		c.r.errorf("volume %d: %v", id, err)
		return
	}
	bs := c.r.Superblock.DataBlockSize
	if d.SizeBytes > d.Blocks*bs || d.SizeBytes+bs <= d.Blocks*bs {
		c.r.errorf("volume %d: size %d bytes does not match %d blocks", id, d.SizeBytes, d.Blocks)
	}
	var mapped uint64
	leafDepth := -1
	c.mappingTree(id, d.MappingRoot, d.Blocks, &mapped, &leafDepth)
	if mapped != d.Mapped {
		c.r.errorf("volume %d: records %d mapped blocks, its tree holds %d", id, d.Mapped, mapped)
	}
	c.r.Mappings += mapped
}

// mappingTree checks a volume's mappings. Shared subtrees are walked once
// for the data recount (a data block's count is the number of distinct
// leaves that map it) but their entries count for every volume.
func (c *checker) mappingTree(id, root, blocks uint64, mapped *uint64, leafDepth *int) {
	c.tree("mapping tree", root, thinblock.MappingValueSize, 0, blocks, 0, leafDepth, func(k uint64, v []byte) {
		*mapped++
		db, _ := thinblock.UnpackMapping(v)
		if db >= c.r.Superblock.DataBlocks {
			c.r.errorf("volume %d: block %d maps to data block %d past the pool's end (%d)", id, k, db, c.r.Superblock.DataBlocks)
			return
		}
		c.dataRefs[db]++
	}, func(b uint64) { *mapped += c.countEntries(b) })
}

// countEntries counts the entries of an already-checked subtree.
func (c *checker) countEntries(b uint64) uint64 {
	buf, ok := c.read(b)
	if !ok {
		return 0
	}
	n, err := btree.Decode(b, buf, thinblock.MappingValueSize)
	if err != nil {
		return 0
	}
	if n.Leaf {
		return uint64(len(n.Keys))
	}
	var total uint64
	for i := range n.Keys {
		total += c.countEntries(n.Child(i))
	}
	return total
}

func (c *checker) spaceMap(root uint64) {
	stored := map[uint64]uint32{}
	leafDepth := -1
	c.tree("space map index", root, 8, 0, ^uint64(0), 0, &leafDepth, func(i uint64, v []byte) {
		b := binary.LittleEndian.Uint64(v)
		if first, _ := c.claim(b, "space map counts"); !first {
			return
		}
		buf, ok := c.read(b)
		if !ok {
			return
		}
		counts, err := spacemap.DecodeCounts(b, i, buf)
		if err != nil {
			c.r.errorf("%v", err)
			return
		}
		for j, n := range counts {
			if n != 0 {
				stored[i*spacemap.CountsPerBlock+uint64(j)] = n
			}
		}
	}, nil)
	for d, n := range stored {
		if d >= c.r.Superblock.DataBlocks {
			c.r.errorf("space map: data block %d past the pool's end has count %d", d, n)
			c.r.SpaceMapWrong++
		} else if c.dataRefs[d] != n {
			c.r.errorf("space map: data block %d has count %d, the mappings give %d", d, n, c.dataRefs[d])
			c.r.SpaceMapWrong++
		}
	}
	for d, n := range c.dataRefs {
		if _, ok := stored[d]; !ok {
			c.r.errorf("space map: data block %d has count 0, the mappings give %d", d, n)
			c.r.SpaceMapWrong++
		}
	}
	c.r.DataUsed = uint64(len(c.dataRefs))
	sb := c.r.Superblock
	if sb.Flags&txn.FlagDataFree != 0 && sb.DataFree != sb.DataBlocks-c.r.DataUsed {
		c.r.errorf("superblock: records %d free data blocks, the mappings leave %d", sb.DataFree, sb.DataBlocks-c.r.DataUsed)
		c.r.SpaceMapWrong++
	}
}
