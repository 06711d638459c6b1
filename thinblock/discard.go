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
