package thinblock

import (
	"encoding/binary"
	"fmt"

	"github.com/unionmount/unionmount/thinblock/btree"
)

// DeviceDetails is the exported form of a device-tree entry, for the
// checker and the dump format.
type DeviceDetails = deviceDetails

// DecodeDeviceDetails parses a device-tree value.
func DecodeDeviceDetails(v []byte) (DeviceDetails, error) { return decodeDetails(v) }

// UnpackMapping splits a mapping-tree value into data block and time.
func UnpackMapping(v []byte) (block uint64, time uint32) { return unpackMapping(v) }

// Value sizes of the pool's trees.
const (
	DetailsValueSize = detailsSize
	MappingValueSize = 8
)

// deviceDetails is a thin volume's entry in the device tree.
type deviceDetails struct {
	MappingRoot  uint64 // root of the volume's mapping tree
	Blocks       uint64 // virtual size in data blocks
	Mapped       uint64 // mapped blocks
	TxnID        uint64 // pool transaction that created it
	CreationTime uint32 // pool time when created
	SnapTime     uint32 // pool time when last snapshotted
	SizeBytes    uint64 // virtual size in bytes (may end inside a block)
	Flags        uint64 // FlagSnapshot
}

// FlagSnapshot marks a volume made by Snapshot.
const FlagSnapshot = 1

const detailsSize = 56

func (d *deviceDetails) encode() []byte {
	b := make([]byte, detailsSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], d.MappingRoot)
	le.PutUint64(b[8:], d.Blocks)
	le.PutUint64(b[16:], d.Mapped)
	le.PutUint64(b[24:], d.TxnID)
	le.PutUint32(b[32:], d.CreationTime)
	le.PutUint32(b[36:], d.SnapTime)
	le.PutUint64(b[40:], d.SizeBytes)
	le.PutUint64(b[48:], d.Flags)
	return b
}

func decodeDetails(b []byte) (deviceDetails, error) {
	if len(b) != detailsSize {
		return deviceDetails{}, fmt.Errorf("device details of %d bytes, want %d", len(b), detailsSize)
	}
	le := binary.LittleEndian
	return deviceDetails{
		MappingRoot: le.Uint64(b[0:]), Blocks: le.Uint64(b[8:]), Mapped: le.Uint64(b[16:]),
		TxnID: le.Uint64(b[24:]), CreationTime: le.Uint32(b[32:]), SnapTime: le.Uint32(b[36:]),
		SizeBytes: le.Uint64(b[40:]), Flags: le.Uint64(b[48:]),
	}, nil
}

// A mapping value packs the data block (low 40 bits) and the pool time
// when the mapping was made (high 24 bits), as dm-thin does.
const (
	blockBits = 40
	blockMask = 1<<blockBits - 1
	// MaxDataBlocks is the most data blocks a pool can address.
	MaxDataBlocks = 1 << blockBits
)

func packMapping(block uint64, time uint32) []byte {
	return binary.LittleEndian.AppendUint64(nil, block&blockMask|uint64(time&0xffffff)<<blockBits)
}

func unpackMapping(v []byte) (block uint64, time uint32) {
	x := binary.LittleEndian.Uint64(v)
	return x & blockMask, uint32(x >> blockBits)
}

// mappingRefs counts the data blocks that mapping-tree leaves point to.
type mappingRefs struct{ p *Pool }

func (r mappingRefs) IncValue(v []byte) error {
	b, _ := unpackMapping(v)
	return r.p.data.Inc(b)
}

func (r mappingRefs) DecValue(v []byte) error {
	b, _ := unpackMapping(v)
	return r.p.decDataLocked(b)
}

var _ btree.ValueRefs = mappingRefs{}
