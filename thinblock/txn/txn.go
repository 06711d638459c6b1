// Package txn is a thin pool's transaction manager: it hands out metadata
// blocks, keeps their reference counts, caches them within a memory
// bound, and commits. Committed metadata is never overwritten in place: a
// block of the committed state is shadowed (copied to a new block) before
// it changes, and only a block the transaction owns outright (allocated
// in it, referenced once: Owns) may change in place, so that a run of
// changes to one node between two commits copies it once; blocks freed in
// a transaction stay reserved until the commit;
// a commit writes and syncs the new blocks, then flips one of two
// checksummed superblocks and syncs again, then copies that superblock
// over the other slot so both hold it (superblock.go says why, and how a
// damaged slot is told from an interrupted commit).
//
// Reference counts are not stored: Open rebuilds them from the trees
// (the pool walks them), which also means they can never leak.
//
// A Manager is not safe for concurrent use; the pool serializes calls.
package txn

import (
	"errors"
	"fmt"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// Named crash points inside Commit, in order.
const (
	CrashBeforeNodeWrite  = "commit-before-node-write"
	CrashMidNodeWrite     = "commit-mid-node-write"
	CrashBeforeNodeSync   = "commit-before-node-sync"
	CrashBeforeSuperblock = "commit-before-superblock"
	CrashBeforeFlipSync   = "commit-before-flip-sync"
	CrashAfterFlip        = "commit-after-flip"
)

// CrashPoints lists Commit's crash points.
func CrashPoints() []string {
	return []string{CrashBeforeNodeWrite, CrashMidNodeWrite, CrashBeforeNodeSync,
		CrashBeforeSuperblock, CrashBeforeFlipSync, CrashAfterFlip}
}

// ErrNoMetadataSpace is returned when the metadata device cannot grow.
var ErrNoMetadataSpace = errors.New("metadata space exhausted")

// Manager manages the metadata blocks of one pool.
type Manager struct {
	dev  blockdev.Device
	sb   Superblock // the committed superblock, without slot flags
	slot int        // the slot sb's primary is in
	// settled is set while the primary on disk is flagged FlagSettled:
	// the next commit must take the flag off before it writes.
	settled  bool
	recovery Recovery

	refs []uint32 // reference count per metadata block
	// fresh holds the blocks allocated in this transaction: they are
	// not reachable from the committed superblock, so they may change
	// in place and be freed at once.
	fresh map[uint64]bool
	// pending holds blocks of the committed state freed in this
	// transaction; they become free after the commit.
	pending map[uint64]bool
	cursor  uint64 // where the next free-block search starts
	cache   *cache
	// Crash, when set, is called at each named crash point of Commit; an
	// error it returns aborts the commit there.
	Crash func(point string) error
	// MaxBlocks bounds the metadata device (0: no bound).
	MaxBlocks uint64
}

// Format writes an empty metadata device: superblock sb in slot 0
// (transaction 1) and its mirror in slot 1.
func Format(dev blockdev.Device, sb Superblock) error {
	buf := make([]byte, blockdev.BlockSize)
	sb.TxnID = 1
	sb.Flags &^= slotFlags
	sb.encode(buf)
	if err := blockdev.WriteBlock(dev, 0, buf); err != nil {
		return err
	}
	sb.Flags |= FlagMirror
	sb.encode(buf)
	if err := blockdev.WriteBlock(dev, 1, buf); err != nil {
		return err
	}
	return dev.Sync()
}

// Open reads the newest valid superblock. The caller must then call
// RebuildRefs before anything else.
func Open(dev blockdev.Device, cacheBlocks int) (*Manager, error) {
	sb, slot, rec, err := readSuperblocks(dev)
	if err != nil {
		return nil, err
	}
	settled := sb.Flags&FlagSettled != 0 && rec.Damaged < 0
	sb.Flags &^= slotFlags
	size, err := dev.Size()
	if err != nil {
		return nil, err
	}
	nblocks := uint64(size) / blockdev.BlockSize
	m := &Manager{dev: dev, sb: sb, slot: slot, settled: settled, recovery: rec, refs: make([]uint32, max(nblocks, FirstFreeBlock)),
		fresh: map[uint64]bool{}, pending: map[uint64]bool{}, cursor: FirstFreeBlock}
	m.refs[0], m.refs[1] = 1, 1
	m.cache = newCache(cacheBlocks, m.writeBack)
	return m, nil
}

// Superblock returns the committed superblock.
func (m *Manager) Superblock() Superblock { return m.sb }

// Recovery says what Open found when a superblock slot was damaged.
func (m *Manager) Recovery() Recovery { return m.recovery }

// writeSlot writes sb with the given slot flags into slot.
func (m *Manager) writeSlot(slot int, sb Superblock, flags uint32) error {
	buf := make([]byte, blockdev.BlockSize)
	sb.Flags = sb.Flags&^slotFlags | flags
	sb.encode(buf)
	return blockdev.WriteBlock(m.dev, uint64(slot), buf)
}

// Settle records a clean close at the committed transaction: the mirror
// is written and synced, then the primary is rewritten, both flagged
// FlagSettled, so that either slot alone shows nothing came after. Call
// it after the last Commit; the Manager must not commit afterwards.
func (m *Manager) Settle() error {
	if m.settled {
		return nil
	}
	if err := m.writeSlot(1-m.slot, m.sb, FlagMirror|FlagSettled); err != nil {
		return fmt.Errorf("settle: write mirror superblock: %w", err)
	}
	if err := m.dev.Sync(); err != nil {
		return fmt.Errorf("settle: sync: %w", err)
	}
	if err := m.writeSlot(m.slot, m.sb, FlagSettled); err != nil {
		return fmt.Errorf("settle: write superblock: %w", err)
	}
	if err := m.dev.Sync(); err != nil {
		return fmt.Errorf("settle: sync: %w", err)
	}
	m.settled = true
	return nil
}

// RebuildRefs sets every reference count from a walk of the committed
// trees: walk calls visit once per reference to a block, and visit
// reports whether this was the block's first reference (so the walk
// descends into each shared subtree once).
func (m *Manager) RebuildRefs(walk func(visit func(b uint64) (first bool, err error)) error) error {
	return walk(func(b uint64) (bool, error) {
		if b < FirstFreeBlock {
			return false, fmt.Errorf("reference to superblock slot %d", b)
		}
		if b >= uint64(len(m.refs)) {
			return false, fmt.Errorf("reference to block %d past the end of the metadata (%d blocks)", b, len(m.refs))
		}
		m.refs[b]++
		return m.refs[b] == 1, nil
	})
}

// Read returns a copy of block b's content.
func (m *Manager) Read(b uint64) ([]byte, error) {
	data, err := m.View(b, nil)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), data...), nil
}

// View returns block b's cached content, which the caller must not
// change or keep past its next call into the Manager. verify, if not
// nil, checks content loaded from the device once; cache hits of a
// verified block skip it.
func (m *Manager) View(b uint64, verify func([]byte) error) ([]byte, error) {
	if b >= uint64(len(m.refs)) || b < FirstFreeBlock {
		return nil, fmt.Errorf("read of metadata block %d outside 2..%d", b, len(m.refs))
	}
	ent, ok := m.cache.get(b)
	if !ok {
		buf := make([]byte, blockdev.BlockSize)
		if err := blockdev.ReadBlock(m.dev, b, buf); err != nil {
			return nil, err
		}
		if err := m.cache.put(b, buf, false); err != nil {
			return nil, err
		}
		if ent, ok = m.cache.get(b); !ok {
			return buf, verifyBlock(buf, verify)
		}
	}
	if !ent.verified && verify != nil {
		if err := verify(ent.data); err != nil {
			return nil, err
		}
		ent.verified = true
	}
	return ent.data, nil
}

func verifyBlock(buf []byte, verify func([]byte) error) error {
	if verify == nil {
		return nil
	}
	return verify(buf)
}

// Write stores new content for block b, which must be fresh (allocated in
// this transaction).
func (m *Manager) Write(b uint64, data []byte) error {
	if !m.fresh[b] {
		return fmt.Errorf("write to metadata block %d of the committed state (it must be shadowed first)", b)
	}
	return m.cache.put(b, append([]byte(nil), data[:blockdev.BlockSize]...), true)
}

// IsFresh reports whether b was allocated in this transaction.
func (m *Manager) IsFresh(b uint64) bool { return m.fresh[b] }

// Owns reports whether the transaction owns block b outright, so that b
// may change in place (Modify): b was allocated in this transaction, so
// the committed state cannot reach it and a crash cannot expose a
// half-made change, and it is referenced once, so no clone made in this
// transaction sees it. A block reached through a shared parent is shared
// whatever its own count: a caller changing a tree checks every block
// from the root down.
func (m *Manager) Owns(b uint64) bool { return m.fresh[b] && m.refs[b] == 1 }

// Modify returns block b's cached content for the caller to change in
// place, and marks it to be written by the commit: the copy-free
// counterpart of Shadow and Write for a block the transaction owns
// (Owns), which the caller must have checked for every block above b
// too. verify, as for View, checks content loaded from the device.
//
// The caller must finish its change, checksum included, before its next
// call into the Manager: any call may write the block back and drop it
// from the cache.
func (m *Manager) Modify(b uint64, verify func([]byte) error) ([]byte, error) {
	if !m.Owns(b) {
		return nil, fmt.Errorf("in-place change of metadata block %d, which is committed or shared (it must be shadowed)", b)
	}
	if _, err := m.View(b, verify); err != nil {
		return nil, err
	}
	ent, ok := m.cache.get(b)
	if !ok {
		return nil, fmt.Errorf("in-place change of metadata block %d: not cached", b)
	}
	ent.dirty = true
	return ent.data, nil
}

// Ref returns b's reference count.
func (m *Manager) Ref(b uint64) uint32 {
	if b >= uint64(len(m.refs)) {
		return 0
	}
	return m.refs[b]
}

// Inc adds a reference to b.
func (m *Manager) Inc(b uint64) {
	m.refs[b]++
}

// Dec drops a reference to b and reports whether it was the last one;
// the caller then drops whatever b referenced.
func (m *Manager) Dec(b uint64) (bool, error) {
	if b >= uint64(len(m.refs)) || m.refs[b] == 0 {
		return false, fmt.Errorf("reference count of metadata block %d would go below zero", b)
	}
	m.refs[b]--
	if m.refs[b] > 0 {
		return false, nil
	}
	if m.fresh[b] {
		delete(m.fresh, b)
		m.cache.drop(b)
		if b < m.cursor {
			m.cursor = b
		}
	} else {
		m.pending[b] = true
	}
	return true, nil
}

// Alloc returns a fresh block with one reference and zero content.
func (m *Manager) Alloc() (uint64, error) {
	n := uint64(len(m.refs))
	for i := uint64(0); i < n; i++ {
		b := (m.cursor + i) % n
		if b < FirstFreeBlock || m.refs[b] != 0 || m.pending[b] {
			continue
		}
		m.cursor = b + 1
		return m.take(b)
	}
	if m.MaxBlocks != 0 && n >= m.MaxBlocks {
		return 0, ErrNoMetadataSpace
	}
	m.refs = append(m.refs, 0)
	m.cursor = n + 1
	return m.take(n)
}

func (m *Manager) take(b uint64) (uint64, error) {
	m.refs[b] = 1
	m.fresh[b] = true
	if err := m.cache.put(b, make([]byte, blockdev.BlockSize), true); err != nil {
		return 0, err
	}
	return b, nil
}

// Shadow returns a fresh block with b's content for the caller to change,
// and whether b was shared (then the caller must add a reference to
// everything b points to). A fresh, unshared block is its own shadow.
func (m *Manager) Shadow(b uint64, verify func([]byte) error) (nb uint64, data []byte, shared bool, err error) {
	view, err := m.View(b, verify)
	if err != nil {
		return 0, nil, false, err
	}
	data = append([]byte(nil), view...)
	if m.fresh[b] && m.refs[b] == 1 {
		return b, data, false, nil
	}
	shared = m.refs[b] > 1
	nb, err = m.Alloc()
	if err != nil {
		return 0, nil, false, err
	}
	if _, err := m.Dec(b); err != nil {
		return 0, nil, false, err
	}
	return nb, data, shared, nil
}

// Stats describes metadata use.
type Stats struct {
	Blocks, Used, Pending, Fresh uint64
}

// Stats counts the metadata blocks in use.
func (m *Manager) Stats() Stats {
	s := Stats{Blocks: uint64(len(m.refs)), Pending: uint64(len(m.pending)), Fresh: uint64(len(m.fresh))}
	for _, r := range m.refs {
		if r > 0 {
			s.Used++
		}
	}
	return s
}

func (m *Manager) writeBack(b uint64, data []byte) error {
	return blockdev.WriteBlock(m.dev, b, data)
}

func (m *Manager) crash(point string) error {
	if m.Crash != nil {
		return m.Crash(point)
	}
	return nil
}

// Commit makes the current state durable with superblock sb (its TxnID
// is set here): every new block is written and synced, then the other
// superblock slot is written and synced. Freed blocks become reusable.
func (m *Manager) Commit(sb Superblock) error {
	if err := m.crash(CrashBeforeNodeWrite); err != nil {
		return err
	}
	if err := m.cache.flush(func() error { return m.crash(CrashMidNodeWrite) }); err != nil {
		return fmt.Errorf("commit: write metadata: %w", err)
	}
	if m.settled {
		// A settled primary says nothing follows it: take that back
		// (synced with the nodes) before a newer superblock exists.
		if err := m.writeSlot(m.slot, m.sb, 0); err != nil {
			return fmt.Errorf("commit: unsettle superblock: %w", err)
		}
		m.settled = false
	}
	if err := m.crash(CrashBeforeNodeSync); err != nil {
		return err
	}
	if err := m.dev.Sync(); err != nil {
		return fmt.Errorf("commit: sync metadata: %w", err)
	}
	if err := m.crash(CrashBeforeSuperblock); err != nil {
		return err
	}
	sb.TxnID = m.sb.TxnID + 1
	sb.Flags &^= slotFlags
	next := 1 - m.slot
	if err := m.writeSlot(next, sb, 0); err != nil {
		return fmt.Errorf("commit: write superblock: %w", err)
	}
	if err := m.crash(CrashBeforeFlipSync); err != nil {
		return err
	}
	if err := m.dev.Sync(); err != nil {
		return fmt.Errorf("commit: sync superblock: %w", err)
	}
	m.sb, m.slot = sb, next
	m.recovery = Recovery{Damaged: -1}
	// The copy over the other slot proves this commit completed; it
	// reaches the disk with the next sync (see superblock.go). A failed
	// write only leaves the older superblock there.
	m.writeSlot(1-next, sb, FlagMirror)
	m.fresh = map[uint64]bool{}
	for b := range m.pending {
		if b < m.cursor {
			m.cursor = b
		}
	}
	m.pending = map[uint64]bool{}
	return m.crash(CrashAfterFlip)
}
