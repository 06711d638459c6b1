package thinblock

import (
	"errors"
	"fmt"
	"syscall"
)

// VolumeBrief is what naming, sizing and opening a volume need. It
// comes from the volume's device-tree and attribute-tree entries alone,
// so listing it costs the same whatever the volume maps.
type VolumeBrief struct {
	ID           uint64
	Size         uint64 // virtual size in bytes
	Mapped       uint64 // mapped blocks (kept in the device tree)
	CreationTime uint32
	SnapTime     uint32
	Snapshot     bool // made by Snapshot
	// HasAttrs is set for a volume made with attributes (every volume
	// made since they exist); then Name and ReadOnly are its choice,
	// and Origin is what it was snapshotted from when HasOrigin.
	HasAttrs  bool
	Name      string
	ReadOnly  bool
	HasOrigin bool
	Origin    uint64
}

// VolumeInfo describes a thin volume, like thin_ls: its brief and the
// sharing of its blocks, which takes a walk of its mappings.
type VolumeInfo struct {
	VolumeBrief
	Exclusive uint64 // mapped blocks no other volume shares
	Shared    uint64 // mapped blocks shared with another volume
}

func (p *Pool) detailsLocked(id uint64) (deviceDetails, error) {
	v, found, err := p.devices.Lookup(p.sb.DevicesRoot, id)
	if err != nil {
		return deviceDetails{}, err
	}
	if !found {
		return deviceDetails{}, fmt.Errorf("volume %d: %w", id, ErrNoVolume)
	}
	return decodeDetails(v)
}

func (p *Pool) saveDetailsLocked(id uint64, d deviceDetails) error {
	root, _, err := p.devices.Insert(p.sb.DevicesRoot, id, d.encode())
	if err != nil {
		return err
	}
	p.sb.DevicesRoot = root
	p.dirty = true
	return nil
}

func (p *Pool) usable() error {
	if p.failed != nil {
		return p.failed
	}
	return nil
}

// CreateVolume makes an empty thin volume of size bytes, writable and
// without a name.
func (p *Pool) CreateVolume(id, size uint64) error {
	return p.CreateVolumeWith(id, size, Attrs{})
}

// CreateVolumeWith makes an empty thin volume of size bytes with the
// given attributes, in one transaction.
func (p *Pool) CreateVolumeWith(id, size uint64, a Attrs) error {
	if err := CheckName(a.Name); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	if err := p.createVolumeLocked(id, size, p.sb.Time, 0); err != nil {
		return err
	}
	return p.saveAttrsLocked(id, volumeAttrs{Attrs: a})
}

// createVolumeLocked makes an empty volume with the given times.
func (p *Pool) createVolumeLocked(id, size uint64, creationTime, snapTime uint32) error {
	if size == 0 {
		return fmt.Errorf("volume %d: size must not be zero: %w", id, syscall.EINVAL)
	}
	if _, err := p.detailsLocked(id); err == nil {
		return fmt.Errorf("volume %d: %w", id, ErrVolumeExists)
	} else if !errors.Is(err, ErrNoVolume) {
		return err
	}
	root, err := p.maps.Empty()
	if err != nil {
		return err
	}
	bs := p.sb.DataBlockSize
	return p.saveDetailsLocked(id, deviceDetails{MappingRoot: root, Blocks: (size + bs - 1) / bs, SizeBytes: size,
		TxnID: p.sb.TxnID, CreationTime: creationTime, SnapTime: snapTime})
}

// Snapshot makes volume id a writable copy-on-write snapshot of origin,
// without a name (see SnapshotWith).
func (p *Pool) Snapshot(id, origin uint64) error {
	return p.SnapshotWith(id, origin, Attrs{})
}

// SnapshotWith makes volume id a copy-on-write snapshot of origin, at a
// cost independent of origin's size: the two share origin's mapping
// tree. Its attributes (and origin) commit with it. It is taken between
// writes: those in flight on origin end first, and new ones wait for it.
func (p *Pool) SnapshotWith(id, origin uint64, a Attrs) error {
	if err := CheckName(a.Name); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.quiesceLocked(origin)
	if err := p.usable(); err != nil {
		return err
	}
	o, err := p.detailsLocked(origin)
	if err != nil {
		return fmt.Errorf("snapshot of %w", err)
	}
	if _, err := p.detailsLocked(id); err == nil {
		return fmt.Errorf("volume %d: %w", id, ErrVolumeExists)
	} else if !errors.Is(err, ErrNoVolume) {
		return err
	}
	p.maps.Clone(o.MappingRoot)
	snap := o
	snap.TxnID, snap.CreationTime, snap.SnapTime = p.sb.TxnID, p.sb.Time, p.sb.Time
	snap.Flags |= FlagSnapshot
	o.SnapTime = p.sb.Time
	if err := p.saveDetailsLocked(origin, o); err != nil {
		return err
	}
	if err := p.saveDetailsLocked(id, snap); err != nil {
		return err
	}
	if err := p.saveAttrsLocked(id, volumeAttrs{Attrs: a, HasOrigin: true, Origin: origin}); err != nil {
		return err
	}
	// Mappings made from now on are younger than the snapshot.
	p.sb.Time++
	return nil
}

// DeleteVolume removes a volume, unless it is held (a *HeldError, which
// is EBUSY); see DeleteVolumes.
func (p *Pool) DeleteVolume(id uint64) error {
	return p.DeleteVolumes([]uint64{id})
}

// DeleteVolumes removes every volume of ids, or none when one is missing
// or held (a *HeldError, which is EBUSY: holds.go). The blocks no other
// volume shares are freed (at the next commit). Writes in flight on them
// end first, so none maps a block after its volume is gone; reads in
// flight keep the blocks they read from being reused until they end.
// The checks and the deletes run under one hold of Pool.mu, the lock Hold
// takes, so no volume is claimed between them.
func (p *Pool) DeleteVolumes(ids []uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.quiesceAllLocked(ids)
	if err := p.usable(); err != nil {
		return err
	}
	roots := make([]uint64, len(ids))
	for i, id := range ids {
		d, err := p.detailsLocked(id)
		if err != nil {
			return err
		}
		if err := p.heldLocked(id); err != nil {
			return err
		}
		roots[i] = d.MappingRoot
	}
	for i, id := range ids {
		root, _, _, err := p.devices.Remove(p.sb.DevicesRoot, id)
		if err != nil {
			return err
		}
		p.sb.DevicesRoot = root
		p.dirty = true
		if err := p.removeAttrsLocked(id); err != nil {
			return err
		}
		if err := p.maps.Delete(roots[i]); err != nil {
			return err
		}
	}
	return nil
}

// quiesceAllLocked returns with no write in flight on any of ids, as
// quiesceLocked does for one: it waits for each busy volume in turn, as
// long as one pass finds any busy (a wait drops p.mu, so a volume waited
// for earlier may have taken a write again).
//
// Preconditions: p.mu is held; it is dropped while waiting.
func (p *Pool) quiesceAllLocked(ids []uint64) {
	for busy := true; busy; {
		busy = false
		for _, id := range ids {
			if _, frozen := p.frozen[id]; frozen || p.io.writing(id) {
				p.quiesceLocked(id)
				busy = true
			}
		}
	}
}

// Volumes lists the volumes in id order, with their block sharing: a
// walk of every mapping of every volume, for ls and status. Whoever
// needs only names, sizes and attributes (opening an export, listing
// the exports) calls VolumesBrief.
func (p *Pool) Volumes() ([]VolumeInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []VolumeInfo
	err := p.walkBriefsLocked(func(b VolumeBrief, d deviceDetails) error {
		info := VolumeInfo{VolumeBrief: b}
		err := p.maps.WalkSharing(d.MappingRoot, func(_ uint64, val []byte, sharedPath bool) error {
			blk, _ := unpackMapping(val)
			c, err := p.data.Get(blk)
			if err != nil {
				return err
			}
			if sharedPath || c > 1 {
				info.Shared++
			} else {
				info.Exclusive++
			}
			return nil
		})
		out = append(out, info)
		return err
	})
	return out, err
}

// VolumesBrief lists the volumes in id order without reading a single
// mapping: the device tree and the attribute tree only, a few metadata
// blocks for the whole pool whatever its volumes map.
func (p *Pool) VolumesBrief() ([]VolumeBrief, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []VolumeBrief
	err := p.walkBriefsLocked(func(b VolumeBrief, _ deviceDetails) error {
		out = append(out, b)
		return nil
	})
	return out, err
}

// walkBriefsLocked calls fn for each volume in id order, with its brief
// and its device details, stopping at the first error.
//
// Preconditions: p.mu is held.
func (p *Pool) walkBriefsLocked(fn func(VolumeBrief, deviceDetails) error) error {
	return p.devices.Walk(p.sb.DevicesRoot, 0, ^uint64(0), func(id uint64, v []byte) (bool, error) {
		d, err := decodeDetails(v)
		if err != nil {
			return false, fmt.Errorf("volume %d: %w", id, err)
		}
		b := VolumeBrief{ID: id, Size: d.SizeBytes, Mapped: d.Mapped, CreationTime: d.CreationTime, SnapTime: d.SnapTime,
			Snapshot: d.Flags&FlagSnapshot != 0}
		a, found, err := p.attrsLocked(id)
		if err != nil {
			return false, fmt.Errorf("volume %d: %w", id, err)
		}
		if found {
			b.HasAttrs, b.Name, b.ReadOnly, b.HasOrigin, b.Origin = true, a.Name, a.ReadOnly, a.HasOrigin, a.Origin
		}
		if err := fn(b, d); err != nil {
			return false, err
		}
		return true, nil
	})
}

// Volume is a handle on one thin volume.
type Volume struct {
	p  *Pool
	id uint64
}

// Volume returns a handle on volume id.
func (p *Pool) Volume(id uint64) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.detailsLocked(id); err != nil {
		return nil, err
	}
	return &Volume{p: p, id: id}, nil
}

// ID is the volume's id.
func (v *Volume) ID() uint64 { return v.id }

// Size is the volume's virtual size in bytes.
func (v *Volume) Size() (uint64, error) {
	v.p.mu.Lock()
	defer v.p.mu.Unlock()
	d, err := v.p.detailsLocked(v.id)
	return d.SizeBytes, err
}
