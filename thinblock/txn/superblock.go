package txn

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// The superblock lives in two slots, blocks 0 and 1; a commit writes the
// slot the committed one is not in, so one valid superblock survives any
// crash.
const (
	superMagic   = 0x7468696e // "thin"
	superVersion = 1
	superSalt    = 0x5b10c4
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
}

// FlagDataFree marks a superblock that records DataFree.
const FlagDataFree = 1

func (s *Superblock) encode(buf []byte) {
	clear(buf[:blockdev.BlockSize])
	le := binary.LittleEndian
	le.PutUint32(buf[4:], superMagic)
	le.PutUint32(buf[8:], superVersion)
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
	if v := le.Uint32(buf[8:]); v != superVersion {
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
	return s, nil
}

// ReadSuperblock returns the valid superblock with the highest
// transaction id, and its slot.
func ReadSuperblock(dev blockdev.Device) (Superblock, int, error) { return readSuperblock(dev) }

func readSuperblock(dev blockdev.Device) (Superblock, int, error) {
	size, err := dev.Size()
	if err != nil {
		return Superblock{}, 0, err
	}
	if size < FirstFreeBlock*blockdev.BlockSize {
		return Superblock{}, 0, fmt.Errorf("metadata is truncated (%d bytes, a pool needs at least %d): %w",
			size, FirstFreeBlock*blockdev.BlockSize, ErrNotAPool)
	}
	buf := make([]byte, blockdev.BlockSize)
	best, slot := Superblock{}, -1
	var errs []error
	for i := 0; i < 2; i++ {
		if err := blockdev.ReadBlock(dev, uint64(i), buf); err != nil {
			return Superblock{}, 0, err
		}
		s, err := DecodeSuperblock(buf)
		if err != nil {
			errs = append(errs, fmt.Errorf("slot %d: %w", i, err))
			continue
		}
		if slot < 0 || s.TxnID > best.TxnID {
			best, slot = s, i
		}
	}
	if slot < 0 {
		return Superblock{}, 0, fmt.Errorf("%w: %v", ErrNotAPool, errors.Join(errs...))
	}
	return best, slot, nil
}
