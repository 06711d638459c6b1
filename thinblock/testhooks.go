package thinblock

// CorruptDataCountForTest sets a data block's stored reference count
// behind the pool's back and commits, so tests can prove the checker and
// the repair see it. Never use it outside tests.
func CorruptDataCountForTest(p *Pool, block uint64, count uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.data.SetCount(block, count); err != nil {
		return err
	}
	p.dirty = true
	return p.commitLocked()
}
