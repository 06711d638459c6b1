package txn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// The superblock lives in two slots, blocks 0 and 1; a commit writes the
// slot the committed one is not in, so one valid superblock survives any
// crash.
//
// Both slots end up holding the last transaction, so that losing either
// block loses nothing, and a slot that is lost can be told from a commit
// that never completed:
//
//   - A commit of transaction T writes T to the free slot and syncs (the
//     primary). Only then does it write a copy of T, flagged FlagMirror,
//     over the other slot; the copy reaches the disk with the next
//     metadata sync (the next commit's, or Settle's). A valid mirror of
//     T therefore proves T completed, and that T+1 did not (T+1's
//     primary overwrites the mirror).
//   - Settle (a clean close) writes and syncs the mirror, then rewrites
//     the primary, both flagged FlagSettled: nothing after T exists. The
//     first commit after an open takes FlagSettled off the primary before
//     it writes its own superblock.
//   - A torn superblock write cannot leave a checksum mismatch: every
//     field and the checksum's input beyond them (zeros in old and new
//     alike) sit in the first 512-byte sector, and sectors are written
//     whole, so the slot holds either its old superblock or the new one.
//     A slot that does not decode was damaged after it was written.
//
// So when one slot is damaged, readSuperblocks works out what it may
// have held (Recovery): nothing newer if the survivor is a mirror or
// settled or the damaged slot still shows an older transaction id; the
// transaction its header still names if that is newer; and otherwise
// (unreadable header beside a plain primary of T) possibly T+1, which
// it reports as a possible loss. Pools written before this change carry
// neither flag: they read as before, and a damaged newest slot is
// reported rather than silently rolled back. Older programs read pools
// written by this one (the flags are ignored, equal transaction ids
// pick slot 0).
const (
	superMagic = 0x7468696e // "thin"
	// superVersion is written by a pool with a volume attribute tree
	// (AttrsRoot); one without writes superVersionNoAttrs, so that older
	// programs, which would not see the tree and could overwrite its
	// blocks, refuse only the pools that have one. Both are read.
	superVersion        = 2
	superVersionNoAttrs = 1
	superSalt           = 0x5b10c4
	// FirstFreeBlock is the first block after the two superblock slots.
	FirstFreeBlock = 2
)

// ErrNotAPool is returned when neither superblock slot holds a valid
// superblock.
var ErrNotAPool = errors.New("no valid superblock (not a thinblock metadata file, or corrupt)")

// Superblock is the root of a committed pool state.
type Superblock struct {
	TxnID         uint64
	DataBlockSize uint64 // bytes
	DataBlocks    uint64
	DevicesRoot   uint64 // device tree root
	DataSMRoot    uint64 // data space map index root
	Time          uint32 // snapshot counter, dm-thin's "time"
	Flags         uint32
	LowWater      uint64 // free data blocks below which status warns
	UUID          [16]byte
	// DataFree is the number of free data blocks at the commit, valid
	// when Flags has FlagDataFree (so opening needs no space map scan).
	DataFree uint64
	// AttrsRoot is the root of the volume attribute tree (names,
	// read-only, origin), 0 when the pool has none yet.
	AttrsRoot uint64
}

// version is the format version s is written with.
func (s *Superblock) version() uint32 {
	if s.AttrsRoot == 0 {
		return superVersionNoAttrs
	}
	return superVersion
}

func knownVersion(v uint32) bool { return v == superVersion || v == superVersionNoAttrs }

// Superblock flags.
const (
	// FlagDataFree marks a superblock that records DataFree.
	FlagDataFree = 1
	// FlagMirror marks the copy of a completed transaction written over
	// the other slot after its commit.
	FlagMirror = 2
	// FlagSettled marks a pool closed cleanly at this transaction.
	FlagSettled = 4
)

// slotFlags are the flags that describe a slot rather than the pool.
const slotFlags = FlagMirror | FlagSettled

// ErrRollback is returned when opening a pool would silently drop a
// transaction that was (or may have been) committed.
var ErrRollback = errors.New("the newest superblock is damaged: opening would roll back a committed transaction")

// Recovery says what reading the superblocks found beyond the normal.
type Recovery struct {
	// Damaged is the slot that did not decode (-1: none) and Reason why.
	Damaged int
	Reason  string
	// Used is the transaction the pool opens at.
	Used uint64
	// Lost is set when the damaged slot held, or may have held, a
	// transaction newer than Used; LostTxn is it, and Certain says the
	// damaged slot still names it (rather than it being inferred).
	Lost    bool
	LostTxn uint64
	Certain bool
}

// String describes the recovery for people.
func (r Recovery) String() string {
	switch {
	case r.Damaged < 0:
		return ""
	case r.Lost && r.Certain:
		return fmt.Sprintf("superblock slot %d (%s) held transaction %d, a completed commit; the other slot holds transaction %d: opening would lose transaction %d",
			r.Damaged, r.Reason, r.LostTxn, r.Used, r.LostTxn)
	case r.Lost:
		return fmt.Sprintf("superblock slot %d is unreadable (%s) and the other slot holds transaction %d of a pool not closed cleanly: slot %d may have held transaction %d, a completed commit (an interrupted one leaves a readable slot), and opening would lose transaction %d",
			r.Damaged, r.Reason, r.Used, r.Damaged, r.LostTxn, r.LostTxn)
	}
	return fmt.Sprintf("superblock slot %d is unreadable (%s); the other slot holds transaction %d and nothing newer was committed: nothing is lost, and the next commit rewrites it",
		r.Damaged, r.Reason, r.Used)
}

func (s *Superblock) encode(buf []byte) {
	clear(buf[:blockdev.BlockSize])
	le := binary.LittleEndian
	le.PutUint32(buf[4:], superMagic)
	le.PutUint32(buf[8:], s.version())
	le.PutUint32(buf[12:], s.Flags)
	le.PutUint64(buf[16:], s.TxnID)
	le.PutUint64(buf[24:], s.DataBlockSize)
	le.PutUint64(buf[32:], s.DataBlocks)
	le.PutUint64(buf[40:], s.DevicesRoot)
	le.PutUint64(buf[48:], s.DataSMRoot)
	le.PutUint32(buf[56:], s.Time)
	le.PutUint64(buf[64:], s.LowWater)
	copy(buf[72:88], s.UUID[:])
	le.PutUint64(buf[88:], s.DataFree)
	le.PutUint64(buf[96:], s.AttrsRoot)
	blockdev.Seal(buf, superSalt)
}

// DecodeSuperblock parses and checks a superblock slot.
func DecodeSuperblock(buf []byte) (Superblock, error) {
	var s Superblock
	if len(buf) < blockdev.BlockSize {
		return s, fmt.Errorf("superblock: short block")
	}
	le := binary.LittleEndian
	if le.Uint32(buf[4:]) != superMagic {
		return s, fmt.Errorf("superblock: wrong magic %#x", le.Uint32(buf[4:]))
	}
	if !blockdev.Verify(buf, superSalt) {
		return s, fmt.Errorf("superblock: checksum mismatch")
	}
	if v := le.Uint32(buf[8:]); !knownVersion(v) {
		return s, fmt.Errorf("superblock: unsupported version %d", v)
	}
	s.Flags = le.Uint32(buf[12:])
	s.TxnID = le.Uint64(buf[16:])
	s.DataBlockSize = le.Uint64(buf[24:])
	s.DataBlocks = le.Uint64(buf[32:])
	s.DevicesRoot = le.Uint64(buf[40:])
	s.DataSMRoot = le.Uint64(buf[48:])
	s.Time = le.Uint32(buf[56:])
	s.LowWater = le.Uint64(buf[64:])
	copy(s.UUID[:], buf[72:88])
	s.DataFree = le.Uint64(buf[88:])
	if le.Uint32(buf[8:]) == superVersion {
		s.AttrsRoot = le.Uint64(buf[96:])
	}
	return s, nil
}

// ReadSuperblock returns the valid superblock with the highest
// transaction id, and its slot.
func ReadSuperblock(dev blockdev.Device) (Superblock, int, error) {
	sb, slot, _, err := ReadSuperblocks(dev)
	return sb, slot, err
}

// ReadSuperblocks returns the superblock the pool opens at (slot flags
// cleared), the slot of its primary, and what a damaged slot means.
func ReadSuperblocks(dev blockdev.Device) (Superblock, int, Recovery, error) {
	sb, slot, r, err := readSuperblocks(dev)
	sb.Flags &^= slotFlags
	return sb, slot, r, err
}

// rawTxnID returns the transaction id a slot that fails its checksum
// still names, if its magic and version are intact.
func rawTxnID(buf []byte) (uint64, bool) {
	le := binary.LittleEndian
	if le.Uint32(buf[4:]) != superMagic || !knownVersion(le.Uint32(buf[8:])) {
		return 0, false
	}
	return le.Uint64(buf[16:]), true
}

func readSuperblocks(dev blockdev.Device) (Superblock, int, Recovery, error) {
	r := Recovery{Damaged: -1}
	size, err := dev.Size()
	if err != nil {
		return Superblock{}, 0, r, err
	}
	if size < FirstFreeBlock*blockdev.BlockSize {
		return Superblock{}, 0, r, fmt.Errorf("metadata is truncated (%d bytes, a pool needs at least %d): %w",
			size, FirstFreeBlock*blockdev.BlockSize, ErrNotAPool)
	}
	var (
		sbs  [2]Superblock
		ok   [2]bool
		raw  [2][]byte
		errs []error
	)
	for i := 0; i < 2; i++ {
		raw[i] = make([]byte, blockdev.BlockSize)
		if err := blockdev.ReadBlock(dev, uint64(i), raw[i]); err != nil {
			return Superblock{}, 0, r, err
		}
		if sbs[i], err = DecodeSuperblock(raw[i]); err != nil {
			errs = append(errs, fmt.Errorf("slot %d: %w", i, err))
			continue
		}
		ok[i] = true
	}
	switch {
	case !ok[0] && !ok[1]:
		return Superblock{}, 0, r, fmt.Errorf("%w: %v", ErrNotAPool, errors.Join(errs...))
	case ok[0] && ok[1]:
		slot := 0
		if sbs[1].TxnID > sbs[0].TxnID || (sbs[1].TxnID == sbs[0].TxnID && sbs[0].Flags&FlagMirror != 0) {
			slot = 1
		}
		return sbs[slot], slot, r, nil
	}
	x := 0
	if ok[1] {
		x = 1
	}
	y := 1 - x
	sb := sbs[x]
	r.Damaged, r.Used = y, sb.TxnID
	r.Reason = strings.TrimPrefix(errs[0].Error(), fmt.Sprintf("slot %d: superblock: ", y))
	// The next commit writes over the damaged slot, never over the only
	// good one.
	slot := x
	if t, named := rawTxnID(raw[y]); named {
		if t > sb.TxnID {
			r.Lost, r.LostTxn, r.Certain = true, t, true
		}
		return sb, slot, r, nil
	}
	if sb.Flags&(FlagMirror|FlagSettled) == 0 {
		r.Lost, r.LostTxn = true, sb.TxnID+1
	}
	return sb, slot, r, nil
}
