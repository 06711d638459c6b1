package thinblock

import (
	"fmt"

	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/spacemap"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// RepairSpaceMap rebuilds the data space map from a recount of the
// mapping trees and commits it; the old space map's blocks stay reserved
// until that commit, so a crash during the repair leaves the old state.
// It returns how many data blocks are in use.
func RepairSpaceMap(meta, data blockdev.Device, opts Options) (uint64, error) {
	tm, err := txn.Open(meta, cacheBlocks(opts))
	if err != nil {
		return 0, err
	}
	if err := checkRecovery(tm, opts); err != nil {
		return 0, err
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
		// Reserve what can still be read of the old space map.
		spacemap.VisitNodes(tm, p.sb.DataSMRoot, visit)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("repair needs readable device and mapping trees: %w", err)
	}
	if leafErr != nil {
		return 0, leafErr
	}
	old := p.sb.DataSMRoot
	if p.data, err = spacemap.Create(tm, p.sb.DataBlocks); err != nil {
		return 0, err
	}
	for b, c := range counts {
		if err := p.data.SetCount(b, c); err != nil {
			return 0, err
		}
	}
	// Drop the old map's blocks: they become free at the commit.
	spacemap.VisitNodes(tm, old, func(b uint64) (bool, error) {
		if tm.Ref(b) > 0 {
			tm.Dec(b)
		}
		return true, nil
	})
	p.dirty = true
	if err := p.Commit(); err != nil {
		return 0, err
	}
	if err := tm.Settle(); err != nil {
		return 0, err
	}
	return uint64(len(counts)), nil
}
