package thinblock

import (
	"fmt"
	"syscall"
)

// ImportVolume creates volume id for a restore, with the given times; its
// mappings come from ImportMapping.
func (p *Pool) ImportVolume(id, size uint64, creationTime, snapTime uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	return p.createVolumeLocked(id, size, creationTime, snapTime)
}

// ImportMapping maps virtual block vb of volume id to data block db
// (metadata only: the data is assumed to be in place already).
func (p *Pool) ImportMapping(id, vb, db uint64, time uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	d, err := p.detailsLocked(id)
	if err != nil {
		return err
	}
	if vb >= d.Blocks {
		return fmt.Errorf("volume %d: block %d is past its end (%d blocks): %w", id, vb, d.Blocks, syscall.EINVAL)
	}
	if db >= p.data.Blocks() {
		return fmt.Errorf("volume %d: data block %d is past the pool's end (%d): %w", id, db, p.data.Blocks(), syscall.EINVAL)
	}
	if err := p.data.Inc(db); err != nil {
		return err
	}
	root, old, err := p.maps.Insert(d.MappingRoot, vb, packMapping(db, time))
	if err != nil {
		return err
	}
	d.MappingRoot = root
	if old != nil {
		b, _ := unpackMapping(old)
		if err := p.data.Dec(b); err != nil {
			return err
		}
	} else {
		d.Mapped++
	}
	return p.saveDetailsLocked(id, d)
}

// SetTime sets the pool's snapshot counter (for a restore).
func (p *Pool) SetTime(t uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sb.Time = t
	p.dirty = true
}

// Details returns a volume's device-tree entry.
func (p *Pool) Details(id uint64) (DeviceDetails, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.detailsLocked(id)
}

// DeltaKind says how a range of two volumes compares.
type DeltaKind string

const (
	DeltaSame      DeltaKind = "same"
	DeltaDifferent DeltaKind = "different"
	DeltaLeftOnly  DeltaKind = "left_only"
	DeltaRightOnly DeltaKind = "right_only"
)

// DeltaRange is a run of virtual blocks that compare alike.
type DeltaRange struct {
	Kind          DeltaKind
	Begin, Length uint64
}

// Delta compares the mappings of volumes a and b block by block, like
// thin_delta: ranges mapped to the same data block, to different ones,
// or in one volume only. Blocks unmapped in both are left out.
func (p *Pool) Delta(a, b uint64) ([]DeltaRange, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	da, err := p.detailsLocked(a)
	if err != nil {
		return nil, err
	}
	db, err := p.detailsLocked(b)
	if err != nil {
		return nil, err
	}
	left, err := p.blockMap(da.MappingRoot)
	if err != nil {
		return nil, err
	}
	right, err := p.blockMap(db.MappingRoot)
	if err != nil {
		return nil, err
	}
	var out []DeltaRange
	add := func(kind DeltaKind, vb uint64) {
		if n := len(out); n > 0 && out[n-1].Kind == kind && out[n-1].Begin+out[n-1].Length == vb {
			out[n-1].Length++
			return
		}
		out = append(out, DeltaRange{Kind: kind, Begin: vb, Length: 1})
	}
	i, j := 0, 0
	for i < len(left) || j < len(right) {
		switch {
		case j == len(right) || (i < len(left) && left[i][0] < right[j][0]):
			add(DeltaLeftOnly, left[i][0])
			i++
		case i == len(left) || right[j][0] < left[i][0]:
			add(DeltaRightOnly, right[j][0])
			j++
		default:
			if left[i][1] == right[j][1] {
				add(DeltaSame, left[i][0])
			} else {
				add(DeltaDifferent, left[i][0])
			}
			i++
			j++
		}
	}
	return out, nil
}

// blockMap lists (virtual block, data block) pairs in order.
func (p *Pool) blockMap(root uint64) ([][2]uint64, error) {
	var out [][2]uint64
	err := p.maps.Walk(root, 0, ^uint64(0), func(k uint64, v []byte) (bool, error) {
		b, _ := unpackMapping(v)
		out = append(out, [2]uint64{k, b})
		return true, nil
	})
	return out, err
}
