package thinblock

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// VolumeInfo describes a thin volume, like thin_ls.
type VolumeInfo struct {
	ID           uint64
	Size         uint64 // virtual size in bytes
	Mapped       uint64 // mapped blocks
	Exclusive    uint64 // mapped blocks no other volume shares
	Shared       uint64 // mapped blocks shared with another volume
	CreationTime uint32
	SnapTime     uint32
	Snapshot     bool // made by Snapshot
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

// CreateVolume makes an empty thin volume of size bytes.
func (p *Pool) CreateVolume(id, size uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	return p.createVolumeLocked(id, size, p.sb.Time, 0)
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

// Snapshot makes volume id a copy-on-write snapshot of origin, at a cost
// independent of origin's size: the two share origin's mapping tree.
func (p *Pool) Snapshot(id, origin uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
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
	// Mappings made from now on are younger than the snapshot.
	p.sb.Time++
	return nil
}

// DeleteVolume removes a volume; the blocks no other volume shares are
// freed (at the next commit).
func (p *Pool) DeleteVolume(id uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	d, err := p.detailsLocked(id)
	if err != nil {
		return err
	}
	root, _, _, err := p.devices.Remove(p.sb.DevicesRoot, id)
	if err != nil {
		return err
	}
	p.sb.DevicesRoot = root
	p.dirty = true
	return p.maps.Delete(d.MappingRoot)
}

// Volumes lists the volumes in id order, with their block sharing.
func (p *Pool) Volumes() ([]VolumeInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []VolumeInfo
	err := p.devices.Walk(p.sb.DevicesRoot, 0, ^uint64(0), func(id uint64, v []byte) (bool, error) {
		d, err := decodeDetails(v)
		if err != nil {
			return false, err
		}
		info := VolumeInfo{ID: id, Size: d.SizeBytes, Mapped: d.Mapped, CreationTime: d.CreationTime, SnapTime: d.SnapTime,
			Snapshot: d.Flags&FlagSnapshot != 0}
		err = p.maps.WalkSharing(d.MappingRoot, func(_ uint64, val []byte, sharedPath bool) error {
			b, _ := unpackMapping(val)
			c, err := p.data.Get(b)
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
		return err == nil, err
	})
	return out, err
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

// span visits the blocks an I/O of length n at off touches: the virtual
// block, the offset inside it, and the range [lo, hi) of the caller's
// buffer it covers.
func (p *Pool) span(off int64, n int, fn func(vb uint64, in int, lo, hi int) error) error {
	bs := int64(p.sb.DataBlockSize)
	for done := 0; done < n; {
		pos := off + int64(done)
		in := pos % bs
		chunk := int(min(int64(n-done), bs-in))
		if err := fn(uint64(pos/bs), int(in), done, done+chunk); err != nil {
			return err
		}
		done += chunk
	}
	return nil
}

// ioStartLocked checks that the pool is usable and that n bytes at off
// lie inside volume id, and returns the volume's details.
func (p *Pool) ioStartLocked(id uint64, off, n int64) (deviceDetails, error) {
	if err := p.usable(); err != nil {
		return deviceDetails{}, err
	}
	d, err := p.detailsLocked(id)
	if err != nil {
		return deviceDetails{}, err
	}
	if off < 0 || n < 0 || uint64(off)+uint64(n) > d.SizeBytes {
		return deviceDetails{}, fmt.Errorf("%d bytes at %d on a volume of %d: %w", n, off, d.SizeBytes, ErrOutOfRange)
	}
	return d, nil
}

// saveIfChangedLocked records details d of volume id if they differ from
// before, keeping err (the I/O's own error) first.
func (p *Pool) saveIfChangedLocked(id uint64, before, d deviceDetails, err error) error {
	if d == before {
		return err
	}
	if serr := p.saveDetailsLocked(id, d); err == nil {
		err = serr
	}
	return err
}

// ReadAt reads from the volume; unprovisioned blocks read as zeros. The
// mappings are resolved under the pool lock, the data read after it,
// with runs of contiguous data blocks read at once.
func (v *Volume) ReadAt(b []byte, off int64) (int, error) {
	p := v.p
	p.mu.Lock()
	d, err := p.ioStartLocked(v.id, off, int64(len(b)))
	if err != nil {
		p.mu.Unlock()
		return 0, err
	}
	type segment struct {
		lo, hi int
		at     int64 // data device offset, -1 for a hole
	}
	var segs []segment
	err = p.span(off, len(b), func(vb uint64, in, lo, hi int) error {
		val, found, err := p.maps.Lookup(d.MappingRoot, vb)
		if err != nil {
			return err
		}
		at := int64(-1)
		if found {
			db, _ := unpackMapping(val)
			at = int64(db*p.sb.DataBlockSize) + int64(in)
		}
		if n := len(segs); n > 0 {
			last := &segs[n-1]
			if (at < 0 && last.at < 0) || (at >= 0 && last.at >= 0 && last.at+int64(last.hi-last.lo) == at) {
				last.hi = hi
				return nil
			}
		}
		segs = append(segs, segment{lo, hi, at})
		return nil
	})
	if err != nil {
		p.mu.Unlock()
		return 0, err
	}
	p.ioGate.RLock()
	p.mu.Unlock()
	defer p.ioGate.RUnlock()
	for _, s := range segs {
		if s.at < 0 {
			clear(b[s.lo:s.hi])
			continue
		}
		if _, err := p.dataDev.ReadAt(b[s.lo:s.hi], s.at); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// WriteAt writes to the volume, provisioning blocks on first write and
// copying blocks still shared with a snapshot. Mapping changes happen
// under the pool lock; the data is written after it.
func (v *Volume) WriteAt(b []byte, off int64) (int, error) {
	p := v.p
	p.mu.Lock()
	d, err := p.ioStartLocked(v.id, off, int64(len(b)))
	if err != nil {
		p.mu.Unlock()
		return 0, err
	}
	before := d
	var jobs []dataJob
	err = p.span(off, len(b), func(vb uint64, in, lo, hi int) error {
		job, err := p.writeBlockLocked(&d, vb, in, b[lo:hi])
		if err == nil && job != nil {
			jobs = append(jobs, *job)
		}
		return err
	})
	err = p.saveIfChangedLocked(v.id, before, d, err)
	// The jobs planned before any error are mapped: their data is
	// written whatever happens next.
	p.ioGate.RLock()
	p.mu.Unlock()
	defer p.ioGate.RUnlock()
	if jerr := p.runJobs(jobs); err == nil {
		err = jerr
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// dataJob is the data side of a write to one block.
type dataJob struct {
	at    int64 // where the chunk goes on the data device
	chunk []byte
	// copyFrom, when not negative, is the old block a copy-on-write
	// copies around the chunk into the new block at blockAt.
	copyFrom, blockAt int64
}

// runJobs does the data I/O of a write, merging chunks that follow each
// other on the data device into one write.
func (p *Pool) runJobs(jobs []dataJob) error {
	bs := int64(p.sb.DataBlockSize)
	for i := 0; i < len(jobs); i++ {
		j := jobs[i]
		if j.copyFrom >= 0 {
			buf := make([]byte, bs)
			if _, err := p.dataDev.ReadAt(buf, j.copyFrom); err != nil {
				return err
			}
			copy(buf[j.at-j.blockAt:], j.chunk)
			if _, err := p.dataDev.WriteAt(buf, j.blockAt); err != nil {
				return err
			}
			continue
		}
		run := j.chunk
		for i+1 < len(jobs) && jobs[i+1].copyFrom < 0 && jobs[i+1].at == j.at+int64(len(run)) &&
			followsInMemory(run, jobs[i+1].chunk) {
			run = run[:len(run)+len(jobs[i+1].chunk)]
			i++
		}
		if _, err := p.dataDev.WriteAt(run, j.at); err != nil {
			return err
		}
	}
	return nil
}

// followsInMemory reports whether next starts right where a ends in the
// same backing array, so the two can be written as one slice.
func followsInMemory(a, next []byte) bool {
	return len(next) > 0 && cap(a) >= len(a)+len(next) && &a[:len(a)+1][len(a)] == &next[0]
}

// writeBlockLocked maps virtual block vb for a write of chunk at offset
// in and returns the data I/O still to do (nil when it was done here).
func (p *Pool) writeBlockLocked(d *deviceDetails, vb uint64, in int, chunk []byte) (*dataJob, error) {
	bs := p.sb.DataBlockSize
	val, found, err := p.maps.Lookup(d.MappingRoot, vb)
	if err != nil {
		return nil, err
	}
	if !found {
		nb, err := p.data.Alloc()
		if err != nil {
			return nil, err
		}
		job, err := p.freshBlockLocked(nb, in, chunk)
		if err != nil {
			return nil, err
		}
		root, _, err := p.maps.Insert(d.MappingRoot, vb, packMapping(nb, p.sb.Time))
		if err != nil {
			return nil, err
		}
		d.MappingRoot = root
		d.Mapped++
		return job, nil
	}
	// If a node on the path is shared, shadow the path first: that adds
	// the references that make the data block's count tell the truth.
	// Otherwise an overwrite touches no metadata at all.
	shared, err := p.maps.PathShared(d.MappingRoot, vb)
	if err != nil {
		return nil, err
	}
	if shared {
		root, _, err := p.maps.Insert(d.MappingRoot, vb, val)
		if err != nil {
			return nil, err
		}
		d.MappingRoot = root
	}
	old, _ := unpackMapping(val)
	count, err := p.data.Get(old)
	if err != nil {
		return nil, err
	}
	if count == 1 {
		return &dataJob{at: int64(old*bs) + int64(in), chunk: chunk, copyFrom: -1}, nil
	}
	// Shared with a snapshot: copy on write. The old block stays
	// reserved until the commit, which waits for this copy.
	nb, err := p.data.Alloc()
	if err != nil {
		return nil, err
	}
	root, _, err := p.maps.Insert(d.MappingRoot, vb, packMapping(nb, p.sb.Time))
	if err != nil {
		return nil, err
	}
	d.MappingRoot = root
	if err := p.data.Dec(old); err != nil {
		return nil, err
	}
	job := &dataJob{at: int64(nb*bs) + int64(in), chunk: chunk, copyFrom: int64(old * bs), blockAt: int64(nb * bs)}
	if len(chunk) == int(bs) {
		job.copyFrom = -1 // the write covers the whole block
	}
	return job, nil
}

// freshBlockLocked prepares new data block nb for a write of chunk at
// in: its old content (from an earlier use) must never show, so it is
// zeroed here, under the lock, by punching a hole where the device can,
// and the chunk is left to write; otherwise the whole block is written
// here.
func (p *Pool) freshBlockLocked(nb uint64, in int, chunk []byte) (*dataJob, error) {
	bs := int(p.sb.DataBlockSize)
	base := int64(nb) * int64(bs)
	if in == 0 && len(chunk) == bs {
		return &dataJob{at: base, chunk: chunk, copyFrom: -1}, nil
	}
	if z, ok := p.dataDev.(blockdev.Zeroer); ok && !p.noPunch {
		if err := z.ZeroRange(base, int64(bs)); err == nil {
			return &dataJob{at: base + int64(in), chunk: chunk, copyFrom: -1}, nil
		}
		p.noPunch = true
	}
	buf := make([]byte, bs)
	copy(buf[in:], chunk)
	_, err := p.dataDev.WriteAt(buf, base)
	return nil, err
}

// Discard unmaps the whole blocks in [off, off+n) and zeroes the partial
// ones at either end.
func (v *Volume) Discard(off int64, n int64) error {
	return v.zeroRange(off, n, true)
}

// WriteZeroes makes [off, off+n) read as zeros; with unmap, whole blocks
// are unmapped rather than written.
func (v *Volume) WriteZeroes(off int64, n int64, unmap bool) error {
	return v.zeroRange(off, n, unmap)
}

func (v *Volume) zeroRange(off, n int64, unmap bool) error {
	p := v.p
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := p.ioStartLocked(v.id, off, n)
	if err != nil {
		return err
	}
	before := d
	bs := int64(p.sb.DataBlockSize)
	first, last := (off+bs-1)/bs, (off+n)/bs // whole blocks [first, last)
	if !unmap || first >= last {
		first, last = 0, 0
	}
	var errOut error
	zero := func(from, to int64) {
		for pos := from; pos < to && errOut == nil; {
			vb := pos / bs
			in := pos % bs
			chunk := min(to-pos, bs-in)
			_, found, err := p.maps.Lookup(d.MappingRoot, uint64(vb))
			if err != nil {
				errOut = err
				return
			}
			if found || !unmap {
				var job *dataJob
				job, errOut = p.writeBlockLocked(&d, uint64(vb), int(in), make([]byte, chunk))
				if errOut == nil && job != nil {
					errOut = p.runJobs([]dataJob{*job})
				}
			}
			pos += chunk
		}
	}
	if first < last {
		zero(off, first*bs)
		if errOut == nil {
			errOut = p.unmapLocked(&d, uint64(first), uint64(last))
		}
		zero(last*bs, off+n)
	} else {
		zero(off, off+n)
	}
	return p.saveIfChangedLocked(v.id, before, d, errOut)
}

// unmapLocked removes the mappings of virtual blocks [from, to).
func (p *Pool) unmapLocked(d *deviceDetails, from, to uint64) error {
	var keys []uint64
	err := p.maps.Walk(d.MappingRoot, from, to, func(k uint64, _ []byte) (bool, error) {
		keys = append(keys, k)
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		root, old, found, err := p.maps.Remove(d.MappingRoot, k)
		if err != nil {
			return err
		}
		d.MappingRoot = root
		if found {
			d.Mapped--
			b, _ := unpackMapping(old)
			if err := p.data.Dec(b); err != nil {
				return err
			}
		}
	}
	return nil
}

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
