package thinblock

import (
	"fmt"
)

// Mapping is one provisioned range of a volume.
type Mapping struct {
	VirtualBlock, DataBlock, Length uint64
	Time                            uint32
}

// Mappings lists the volume's mapped ranges in [from, to) blocks,
// merging runs of consecutive blocks.
func (v *Volume) Mappings(from, to uint64) ([]Mapping, error) {
	p := v.p
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.detailsLocked(v.id)
	if err != nil {
		return nil, err
	}
	return p.mappingsLocked(d.MappingRoot, from, to)
}

func (p *Pool) mappingsLocked(root, from, to uint64) ([]Mapping, error) {
	var out []Mapping
	err := p.maps.Walk(root, from, to, func(k uint64, val []byte) (bool, error) {
		b, t := unpackMapping(val)
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.VirtualBlock+last.Length == k && last.DataBlock+last.Length == b && last.Time == t {
				last.Length++
				return true, nil
			}
		}
		out = append(out, Mapping{VirtualBlock: k, DataBlock: b, Length: 1, Time: t})
		return true, nil
	})
	return out, err
}

// Extent is a run of a volume's bytes that is provisioned or a hole.
type Extent struct {
	Length uint64
	Hole   bool
}

// Extents describes the provisioning of [off, off+n), clamped to the
// volume's end, as runs of provisioned bytes and holes (reading as
// zeros), in order.
func (v *Volume) Extents(off, n int64) ([]Extent, error) {
	p := v.p
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.detailsLocked(v.id)
	if err != nil {
		return nil, err
	}
	if off < 0 || n <= 0 || uint64(off) >= d.SizeBytes {
		return nil, fmt.Errorf("extents of %d bytes at %d on a volume of %d: %w", n, off, d.SizeBytes, ErrOutOfRange)
	}
	end := min(uint64(off)+uint64(n), d.SizeBytes)
	bs := p.sb.DataBlockSize
	var out []Extent
	add := func(length uint64, hole bool) {
		if length == 0 {
			return
		}
		if k := len(out); k > 0 && out[k-1].Hole == hole {
			out[k-1].Length += length
			return
		}
		out = append(out, Extent{Length: length, Hole: hole})
	}
	pos := uint64(off)
	err = p.maps.Walk(d.MappingRoot, pos/bs, (end+bs-1)/bs, func(k uint64, _ []byte) (bool, error) {
		start := max(k*bs, pos)
		stop := min((k+1)*bs, end)
		add(start-pos, true)
		add(stop-start, false)
		pos = stop
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	add(end-pos, true)
	return out, nil
}
