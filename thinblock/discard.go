package thinblock

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
	// Everything here happens under the lock, but not the data I/O of
	// requests already admitted: wait for any block being filled.
	d, err := p.admitLocked(v.id, off, n, false)
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
				errOut = p.writeNowLocked(&d, uint64(vb), int(in), make([]byte, chunk))
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
			if err := p.decDataLocked(b); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeNowLocked writes chunk at in of virtual block vb with the lock
// held throughout, so a new block is mapped as soon as it is filled.
//
// Preconditions: p.mu is held; no cell is held on (volume, vb).
func (p *Pool) writeNowLocked(d *deviceDetails, vb uint64, in int, chunk []byte) error {
	job, err := p.writeBlockLocked(d, vb, in, chunk)
	if err != nil {
		return err
	}
	done, err := p.runJobs([]dataJob{job})
	if job.fill != nil {
		if done == 1 {
			return p.mapNewLocked(d, job.fill)
		}
		p.data.Release(job.fill.nb)
	}
	return err
}
