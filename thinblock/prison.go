package thinblock

import "sync"

// This file keeps the copy-on-write rule (see the package doc): the
// cells that make requests wait for a virtual block whose new data block
// is being filled, and the counts of data I/O running outside Pool.mu
// that keep a block's references, and a volume's snapshot, waiting while
// that I/O runs.

// cellKey names one virtual block of one volume.
type cellKey struct{ vol, vb uint64 }

// conflictLocked returns a channel to wait on when a request on
// [off, off+n) of volume id must not start yet: a cell is held on one of
// its blocks or, for a write (frozen), a snapshot of the volume is
// waiting for its writes to drain. Nil means go ahead.
//
// Preconditions: p.mu is held.
func (p *Pool) conflictLocked(id uint64, off, n int64, frozen bool) <-chan struct{} {
	if frozen {
		if ch, ok := p.frozen[id]; ok {
			return ch
		}
	}
	if len(p.cells) == 0 || n <= 0 {
		return nil
	}
	bs := int64(p.sb.DataBlockSize)
	first, last := uint64(off/bs), uint64((off+n-1)/bs)
	if last-first >= uint64(len(p.cells)) {
		for k, ch := range p.cells {
			if k.vol == id && k.vb >= first && k.vb <= last {
				return ch
			}
		}
		return nil
	}
	for vb := first; vb <= last; vb++ {
		if ch, ok := p.cells[cellKey{id, vb}]; ok {
			return ch
		}
	}
	return nil
}

// admitLocked checks a request on volume id and waits (dropping p.mu
// meanwhile) until conflictLocked lets it start, then returns the
// volume's details as they are now.
//
// Preconditions: p.mu is held; it is held again on return.
func (p *Pool) admitLocked(id uint64, off, n int64, write bool) (deviceDetails, error) {
	for {
		d, err := p.ioStartLocked(id, off, n)
		if err != nil {
			return d, err
		}
		ch := p.conflictLocked(id, off, n, write)
		if ch == nil {
			return d, nil
		}
		p.mu.Unlock()
		<-ch
		p.mu.Lock()
	}
}

// quiesceLocked waits until no write to volume id is in flight, keeping
// new ones out meanwhile (they wait in admitLocked). It returns with
// p.mu held and no write to id admitted, so the caller's change falls
// between writes; what it checked before may have changed.
//
// Preconditions: p.mu is held; it is dropped while waiting.
func (p *Pool) quiesceLocked(id uint64) {
	for {
		if ch, ok := p.frozen[id]; ok {
			p.mu.Unlock()
			<-ch
			p.mu.Lock()
			continue
		}
		if !p.io.writing(id) {
			return
		}
		ch := make(chan struct{})
		p.frozen[id] = ch
		p.mu.Unlock()
		p.io.waitWrites(id)
		p.mu.Lock()
		delete(p.frozen, id)
		close(ch)
	}
}

// decDataLocked drops a reference to data block b, or, while I/O to b
// is in flight, leaves it to the next commit.
//
// Preconditions: p.mu is held.
func (p *Pool) decDataLocked(b uint64) error {
	if p.io.busy(b) {
		p.deferred = append(p.deferred, b)
		return nil
	}
	return p.data.Dec(b)
}

// lockCellLocked takes the cell of (vol, vb); the caller has checked
// that it is free.
//
// Preconditions: p.mu is held.
func (p *Pool) lockCellLocked(vol, vb uint64) {
	p.cells[cellKey{vol, vb}] = make(chan struct{})
}

// unlockCellLocked frees the cell of (vol, vb) and wakes its waiters.
//
// Preconditions: p.mu is held.
func (p *Pool) unlockCellLocked(vol, vb uint64) {
	k := cellKey{vol, vb}
	if ch, ok := p.cells[k]; ok {
		close(ch)
		delete(p.cells, k)
	}
}

// inflight counts the data I/O that runs after Pool.mu is released: the
// requests reading or writing each data block, and the writes in flight
// on each volume. Its lock is a leaf.
type inflight struct {
	mu      sync.Mutex
	blocks  map[uint64]int32 // guarded by mu
	writes  map[uint64]int32 // guarded by mu
	waiters int              // guarded by mu: Snapshots in waitWrites
	drained sync.Cond        // L is &mu; broadcast when a volume's writes reach 0
}

func (f *inflight) init() {
	f.blocks = map[uint64]int32{}
	f.writes = map[uint64]int32{}
	f.drained.L = &f.mu
}

// start records a request's I/O on blocks and, for a write, on volume
// vol. Called under Pool.mu, so nothing can free those blocks first.
func (f *inflight) start(blocks []uint64, write bool, vol uint64) {
	f.mu.Lock()
	for _, b := range blocks {
		f.blocks[b]++
	}
	if write {
		f.writes[vol]++
	}
	f.mu.Unlock()
}

// doneBlocks records that the I/O on blocks has ended.
func (f *inflight) doneBlocks(blocks []uint64) {
	if len(blocks) == 0 {
		return
	}
	f.mu.Lock()
	for _, b := range blocks {
		if f.blocks[b]--; f.blocks[b] <= 0 {
			delete(f.blocks, b)
		}
	}
	f.mu.Unlock()
}

// doneWrite records that a write on volume vol has ended: its data is
// written and its new blocks are mapped.
func (f *inflight) doneWrite(vol uint64) {
	f.mu.Lock()
	if f.writes[vol]--; f.writes[vol] <= 0 {
		delete(f.writes, vol)
		if f.waiters > 0 {
			f.drained.Broadcast()
		}
	}
	f.mu.Unlock()
}

// busy reports whether I/O to data block b is running.
func (f *inflight) busy(b uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blocks[b] > 0
}

// writing reports whether writes to volume vol are in flight.
func (f *inflight) writing(vol uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes[vol] > 0
}

// waitWrites waits until no write to volume vol is in flight. Called
// without Pool.mu, which those writes may need to finish.
func (f *inflight) waitWrites(vol uint64) {
	f.mu.Lock()
	f.waiters++
	for f.writes[vol] > 0 {
		f.drained.Wait()
	}
	f.waiters--
	f.mu.Unlock()
}
