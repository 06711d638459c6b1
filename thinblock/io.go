package thinblock

import (
	"errors"
	"fmt"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

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
			if c, ok := p.dataDev.(blockdev.Copier); ok && !p.noCopyRange.Load() {
				err := c.CopyRange(j.blockAt, j.copyFrom, bs)
				if err == nil {
					_, err = p.dataDev.WriteAt(j.chunk, j.at)
					if err != nil {
						return err
					}
					continue
				}
				if !errors.Is(err, blockdev.ErrNoCopyRange) {
					return err
				}
				p.noCopyRange.Store(true) // copy through memory from now on
			}
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
		if err := p.mapLocked(d, vb, packMapping(nb, p.sb.Time)); err != nil {
			return nil, err
		}
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
		if err := p.mapLocked(d, vb, val); err != nil {
			return nil, err
		}
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
	if err := p.mapLocked(d, vb, packMapping(nb, p.sb.Time)); err != nil {
		return nil, err
	}
	if err := p.data.Dec(old); err != nil {
		return nil, err
	}
	job := &dataJob{at: int64(nb*bs) + int64(in), chunk: chunk, copyFrom: int64(old * bs), blockAt: int64(nb * bs)}
	if len(chunk) == int(bs) {
		job.copyFrom = -1 // the write covers the whole block
	}
	return job, nil
}

// mapLocked sets vb's mapping in d's tree (shadowing the path) and
// records the new root in d.
func (p *Pool) mapLocked(d *deviceDetails, vb uint64, val []byte) error {
	root, _, err := p.maps.Insert(d.MappingRoot, vb, val)
	if err != nil {
		return err
	}
	d.MappingRoot = root
	return nil
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
		// A block never written since the file was made (or since its
		// last punch) is a hole already: most fresh blocks of a young pool.
		if z.IsHole(base, int64(bs)) {
			return &dataJob{at: base + int64(in), chunk: chunk, copyFrom: -1}, nil
		}
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
