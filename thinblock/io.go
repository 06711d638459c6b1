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
// with runs of contiguous data blocks read at once. A read of a block
// whose new data block is still being filled waits for it.
func (v *Volume) ReadAt(b []byte, off int64) (int, error) {
	p := v.p
	p.mu.Lock()
	d, err := p.admitLocked(v.id, off, int64(len(b)), false)
	if err != nil {
		p.mu.Unlock()
		return 0, err
	}
	type segment struct {
		lo, hi int
		at     int64 // data device offset, -1 for a hole
	}
	var segs []segment
	var held []uint64 // the data blocks read
	err = p.span(off, len(b), func(vb uint64, in, lo, hi int) error {
		val, found, err := p.maps.Lookup(d.MappingRoot, vb)
		if err != nil {
			return err
		}
		at := int64(-1)
		if found {
			db, _ := unpackMapping(val)
			held = append(held, db)
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
	p.io.start(held, false, 0)
	p.ioGate.RLock()
	p.mu.Unlock()
	defer p.ioGate.RUnlock()
	defer p.io.doneBlocks(held)
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
// under the pool lock and the data is written after it, except that a
// new data block that must be filled (a copy, or a block written whole)
// is mapped only once it is: its virtual block's cell is held meanwhile,
// so other requests on that block wait.
func (v *Volume) WriteAt(b []byte, off int64) (int, error) {
	p := v.p
	p.mu.Lock()
	d, err := p.admitLocked(v.id, off, int64(len(b)), true)
	if err != nil {
		p.mu.Unlock()
		return 0, err
	}
	before := d
	var jobs []dataJob
	err = p.span(off, len(b), func(vb uint64, in, lo, hi int) error {
		job, err := p.writeBlockLocked(&d, vb, in, b[lo:hi])
		if err == nil {
			jobs = append(jobs, job)
		}
		return err
	})
	err = p.saveIfChangedLocked(v.id, before, d, err)
	// The jobs planned before any error are done whatever happens next:
	// those on mapped blocks must be, and the others cost nothing more.
	var held []uint64 // blocks written in place or copied from
	fills := false
	bs := int64(p.sb.DataBlockSize)
	for _, j := range jobs {
		switch {
		case j.fill == nil:
			held = append(held, uint64(j.at/bs))
		case j.fill.copyFrom >= 0:
			held = append(held, uint64(j.fill.copyFrom/bs))
			fallthrough
		default:
			p.lockCellLocked(v.id, j.fill.vb)
			fills = true
		}
	}
	p.io.start(held, true, v.id)
	p.ioGate.RLock()
	p.mu.Unlock()
	done, jerr := p.runJobs(jobs)
	p.io.doneBlocks(held)
	p.ioGate.RUnlock()
	if err == nil {
		err = jerr
	}
	if fills {
		p.mu.Lock()
		if perr := p.publishLocked(v.id, jobs, done); err == nil {
			err = perr
		}
		p.io.doneWrite(v.id)
		p.mu.Unlock()
	} else {
		p.io.doneWrite(v.id)
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
	// fill, when set, is a new data block the job fills before it may be
	// mapped; at lies inside it.
	fill *newBlock
}

// chunkOnly reports a job whose only I/O is writing its chunk: an
// overwrite in place, or a new block the chunk covers whole.
func (j dataJob) chunkOnly() bool {
	return j.fill == nil || (j.fill.copyFrom < 0 && !j.fill.zero)
}

// newBlock is a reserved data block that becomes virtual block vb's once
// it holds its final content: the chunk and, around it, a copy of the
// block at copyFrom (a copy on write) or zeros (zero).
type newBlock struct {
	vb, nb   uint64
	blockAt  int64 // nb's offset on the data device
	copyFrom int64 // -1 when nothing is copied
	zero     bool  // write zeros around the chunk
}

// runJobs does the data I/O of a write, merging chunks that follow each
// other on the data device into one write. It returns how many jobs
// completed (all of them, or those before the one that failed).
func (p *Pool) runJobs(jobs []dataJob) (int, error) {
	for i := 0; i < len(jobs); i++ {
		j := jobs[i]
		if !j.chunkOnly() {
			if err := p.fillBlock(j); err != nil {
				return i, err
			}
			continue
		}
		run, last := j.chunk, i
		for last+1 < len(jobs) && jobs[last+1].chunkOnly() && jobs[last+1].at == j.at+int64(len(run)) &&
			followsInMemory(run, jobs[last+1].chunk) {
			run = run[:len(run)+len(jobs[last+1].chunk)]
			last++
		}
		if _, err := p.dataDev.WriteAt(run, j.at); err != nil {
			return i, err
		}
		i = last
	}
	return len(jobs), nil
}

// fillBlock writes job j's new block whole: the chunk and, around it,
// the copied block or zeros (runJobs writes chunkOnly jobs itself).
func (p *Pool) fillBlock(j dataJob) error {
	f, bs := j.fill, int64(p.sb.DataBlockSize)
	if f.copyFrom >= 0 {
		if c, ok := p.dataDev.(blockdev.Copier); ok && !p.noCopyRange.Load() {
			err := c.CopyRange(f.blockAt, f.copyFrom, bs)
			if err == nil {
				_, err = p.dataDev.WriteAt(j.chunk, j.at)
				return err
			}
			if !errors.Is(err, blockdev.ErrNoCopyRange) {
				return err
			}
			p.noCopyRange.Store(true) // copy through memory from now on
		}
	}
	buf := make([]byte, bs)
	if f.copyFrom >= 0 {
		if _, err := p.dataDev.ReadAt(buf, f.copyFrom); err != nil {
			return err
		}
	}
	copy(buf[j.at-f.blockAt:], j.chunk)
	_, err := p.dataDev.WriteAt(buf, f.blockAt)
	return err
}

// publishLocked maps the new blocks of the first done jobs of a write to
// volume id, releases the reservations of the rest, and frees the cells.
//
// Preconditions: p.mu is held.
func (p *Pool) publishLocked(id uint64, jobs []dataJob, done int) error {
	d, derr := p.detailsLocked(id) // the volume may be gone: then map nothing
	before, err := d, derr
	for i, j := range jobs {
		if j.fill == nil {
			continue
		}
		if err == nil && i < done {
			err = p.mapNewLocked(&d, j.fill)
		} else {
			p.data.Release(j.fill.nb)
		}
		p.unlockCellLocked(id, j.fill.vb)
	}
	if derr != nil {
		return derr
	}
	return p.saveIfChangedLocked(id, before, d, err)
}

// mapNewLocked maps f's virtual block to its filled block, dropping the
// reference to the block it replaces.
//
// Preconditions: p.mu is held; f.nb is reserved and holds its content.
func (p *Pool) mapNewLocked(d *deviceDetails, f *newBlock) error {
	if err := p.data.Claim(f.nb); err != nil {
		p.data.Release(f.nb)
		return err
	}
	root, old, err := p.maps.Insert(d.MappingRoot, f.vb, packMapping(f.nb, p.sb.Time))
	if err != nil {
		return err
	}
	d.MappingRoot = root
	if old == nil {
		d.Mapped++
		return nil
	}
	b, _ := unpackMapping(old)
	return p.decDataLocked(b)
}

// followsInMemory reports whether next starts right where a ends in the
// same backing array, so the two can be written as one slice.
func followsInMemory(a, next []byte) bool {
	return len(next) > 0 && cap(a) >= len(a)+len(next) && &a[:len(a)+1][len(a)] == &next[0]
}

// writeBlockLocked plans a write of chunk at offset in of virtual block
// vb: an overwrite in place of a block only this volume maps, a fresh
// block zeroed and mapped here, or a new block (reserved, unmapped) for
// the job to fill.
//
// Preconditions: p.mu is held; no cell is held on (volume, vb).
func (p *Pool) writeBlockLocked(d *deviceDetails, vb uint64, in int, chunk []byte) (dataJob, error) {
	bs := p.sb.DataBlockSize
	val, found, err := p.maps.Lookup(d.MappingRoot, vb)
	if err != nil {
		return dataJob{}, err
	}
	if !found {
		return p.freshBlockLocked(d, vb, in, chunk)
	}
	// If a node on the path is shared, shadow the path first: that adds
	// the references that make the data block's count tell the truth.
	// Otherwise an overwrite touches no metadata at all.
	shared, err := p.maps.PathShared(d.MappingRoot, vb)
	if err != nil {
		return dataJob{}, err
	}
	if shared {
		if err := p.mapLocked(d, vb, val); err != nil {
			return dataJob{}, err
		}
	}
	old, _ := unpackMapping(val)
	count, err := p.data.Get(old)
	if err != nil {
		return dataJob{}, err
	}
	if count == 1 {
		return dataJob{at: int64(old*bs) + int64(in), chunk: chunk}, nil
	}
	// Shared with a snapshot: copy on write, into a block mapped once
	// the copy is done. The old block stays mapped meanwhile.
	nb, err := p.data.Reserve()
	if err != nil {
		return dataJob{}, err
	}
	f := &newBlock{vb: vb, nb: nb, blockAt: int64(nb * bs), copyFrom: int64(old * bs)}
	if len(chunk) == int(bs) {
		f.copyFrom = -1 // the write covers the whole block
	}
	return dataJob{at: f.blockAt + int64(in), chunk: chunk, fill: f}, nil
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

// freshBlockLocked plans the first write of chunk at in to unmapped
// block vb. A new data block's old content (from an earlier use) must
// never show: where the device can punch a hole, the block is zeroed
// here, under the lock, and mapped at once, leaving the chunk to write;
// otherwise the block is reserved for the job to fill whole (the chunk,
// and zeros around it) and mapped after.
//
// Preconditions: p.mu is held.
func (p *Pool) freshBlockLocked(d *deviceDetails, vb uint64, in int, chunk []byte) (dataJob, error) {
	bs := int(p.sb.DataBlockSize)
	if z, ok := p.dataDev.(blockdev.Zeroer); ok && !p.noPunch && len(chunk) < bs {
		nb, err := p.data.Alloc()
		if err != nil {
			return dataJob{}, err
		}
		base := int64(nb) * int64(bs)
		// A block never written since the file was made (or since its
		// last punch) is a hole already: most fresh blocks of a young pool.
		if z.IsHole(base, int64(bs)) || z.ZeroRange(base, int64(bs)) == nil {
			if err := p.mapLocked(d, vb, packMapping(nb, p.sb.Time)); err != nil {
				return dataJob{}, err
			}
			d.Mapped++
			return dataJob{at: base + int64(in), chunk: chunk}, nil
		}
		p.noPunch = true
		if err := p.data.Dec(nb); err != nil {
			return dataJob{}, err
		}
	}
	nb, err := p.data.Reserve()
	if err != nil {
		return dataJob{}, err
	}
	f := &newBlock{vb: vb, nb: nb, blockAt: int64(nb) * int64(bs), copyFrom: -1, zero: len(chunk) < bs}
	return dataJob{at: f.blockAt + int64(in), chunk: chunk, fill: f}, nil
}
