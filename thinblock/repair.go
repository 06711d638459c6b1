package thinblock

import (
	"errors"
	"fmt"
	"sort"

	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/spacemap"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// ErrUnverified is returned by RepairSpaceMap when a mapping points at a
// data block the space map does not vouch for; nothing is changed.
var ErrUnverified = errors.New("repair cannot vouch for some mappings")

// Unverified is a mapping repair cannot vouch for. Its node's checksum
// holds, so only the space map can witness it, and the space map gave
// its data block fewer references than the mappings do (or could not be
// read): either the space map lost a count, or the mapping was changed
// to point there and now reads another block's data. Repair cannot tell
// which, so it must not make the two agree by itself.
type Unverified struct {
	Volume, Block uint64 // the volume and its block (in data blocks)
	DataBlock     uint64
	Stored        uint32 // the space map's count
	Unreadable    bool   // the space map's count could not be read
	Mapped        uint32 // references the mappings give
}

func (u Unverified) String() string {
	stored := fmt.Sprintf("the space map gives it %d", u.Stored)
	if u.Unreadable {
		stored = "its space map count is unreadable"
	}
	return fmt.Sprintf("volume %d block %d -> data block %d: %d mapping leaves refer to it, %s", u.Volume, u.Block, u.DataBlock, u.Mapped, stored)
}

// RepairReport says what RepairSpaceMap did and could not do.
type RepairReport struct {
	InUse uint64 // data blocks in use after the repair
	// Freed lists data blocks the space map counted that no mapping
	// refers to: if a mapping was redirected, its old data is there.
	Freed []uint64
	// Unverified lists the mappings the repair could not vouch for.
	Unverified []Unverified
	// Rebuilt is set when the space map was rebuilt and committed.
	Rebuilt bool
}

// RepairSpaceMap rebuilds the data space map from a recount of the
// mapping trees and commits it; the old space map's blocks stay reserved
// until that commit, so a crash during the repair leaves the old state.
//
// A recount only vouches for counts, not for mappings: where the mappings
// give a data block more references than the space map did, a mapping
// may have been changed (see Unverified). Then nothing is changed and
// ErrUnverified is returned with the list, unless trustMappings says the
// caller vouches for the mappings. Where the space map counted more than
// the mappings give, the recount is kept and the freed blocks listed.
func RepairSpaceMap(meta, data blockdev.Device, opts Options, trustMappings bool) (*RepairReport, error) {
	tm, err := txn.Open(meta, cacheBlocks(opts))
	if err != nil {
		return nil, err
	}
	if err := checkRecovery(tm, opts); err != nil {
		return nil, err
	}
	p := newPool(meta, data, tm, opts)
	counts := map[uint64]uint32{}
	var leafErr error
	err = tm.RebuildRefs(func(visit func(b uint64) (bool, error)) error {
		err := p.devices.VisitNodes(p.sb.DevicesRoot, visit, func(id uint64, v []byte) error {
			d, err := decodeDetails(v)
			if err != nil {
				return fmt.Errorf("volume %d: %w", id, err)
			}
			// Each distinct leaf's entries count once: a data block's
			// count is the number of leaves that map it.
			return p.maps.VisitNodes(d.MappingRoot, visit, func(vb uint64, mv []byte) error {
				b, _ := unpackMapping(mv)
				if b >= p.sb.DataBlocks {
					leafErr = fmt.Errorf("volume %d block %d maps past the pool's end", id, vb)
					return nil
				}
				counts[b]++
				return nil
			})
		})
		if err != nil {
			return err
		}
		if err := p.visitAttrs(visit); err != nil {
			return fmt.Errorf("volume attributes: %w", err)
		}
		// Reserve what can still be read of the old space map.
		spacemap.VisitNodes(tm, p.sb.DataSMRoot, visit)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("repair needs readable device and mapping trees: %w", err)
	}
	if leafErr != nil {
		return nil, leafErr
	}
	report := &RepairReport{InUse: uint64(len(counts))}
	// Compare with what the old space map says, block by block.
	old, oldErr := spacemap.Open(tm, p.sb.DataSMRoot, p.sb.DataBlocks)
	suspect := map[uint64]Unverified{}
	for b := uint64(0); b < p.sb.DataBlocks; b++ {
		var stored uint32
		readable := oldErr == nil
		if readable {
			if stored, err = old.Get(b); err != nil {
				readable = false
			}
		}
		mapped := counts[b]
		switch {
		case !readable && mapped > 0, mapped > stored:
			suspect[b] = Unverified{DataBlock: b, Stored: stored, Unreadable: !readable, Mapped: mapped}
		case readable && stored > 0 && mapped == 0:
			report.Freed = append(report.Freed, b)
		}
	}
	if len(suspect) > 0 {
		report.Unverified, err = p.mappingsTo(suspect)
		if err != nil {
			return nil, err
		}
		if !trustMappings {
			return report, fmt.Errorf("%w: %d mappings point at data blocks the space map did not count for them", ErrUnverified, len(report.Unverified))
		}
	}
	oldRoot := p.sb.DataSMRoot
	if p.data, err = spacemap.Create(tm, p.sb.DataBlocks); err != nil {
		return nil, err
	}
	for b, c := range counts {
		if err := p.data.SetCount(b, c); err != nil {
			return nil, err
		}
	}
	// Drop the old map's blocks: they become free at the commit.
	spacemap.VisitNodes(tm, oldRoot, func(b uint64) (bool, error) {
		if tm.Ref(b) > 0 {
			tm.Dec(b)
		}
		return true, nil
	})
	p.dirty = true
	if err := p.Commit(); err != nil {
		return nil, err
	}
	if err := tm.Settle(); err != nil {
		return nil, err
	}
	report.Rebuilt = true
	return report, nil
}

// mappingsTo lists every mapping to the data blocks in suspect, in order
// of volume and block.
func (p *Pool) mappingsTo(suspect map[uint64]Unverified) ([]Unverified, error) {
	var out []Unverified
	err := p.devices.Walk(p.sb.DevicesRoot, 0, ^uint64(0), func(id uint64, v []byte) (bool, error) {
		d, err := decodeDetails(v)
		if err != nil {
			return false, fmt.Errorf("volume %d: %w", id, err)
		}
		return true, p.maps.Walk(d.MappingRoot, 0, ^uint64(0), func(vb uint64, mv []byte) (bool, error) {
			b, _ := unpackMapping(mv)
			if u, ok := suspect[b]; ok {
				u.Volume, u.Block = id, vb
				out = append(out, u)
			}
			return true, nil
		})
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Volume != out[j].Volume {
			return out[i].Volume < out[j].Volume
		}
		return out[i].Block < out[j].Block
	})
	return out, err
}
