package spacemap

import "sort"

// TakeFreed returns, in order, the blocks whose count reached zero since
// the last call, and forgets them. Some may be in use again: ask Unused.
func (m *Map) TakeFreed() []uint64 {
	out := make([]uint64, 0, len(m.freed))
	for d := range m.freed {
		out = append(out, d)
	}
	m.freed = nil
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Unused reports whether data block d is free for good: no reference,
// not freed in the current transaction (whose committed mappings may
// still point at it), and not reserved for a write that is filling it.
func (m *Map) Unused(d uint64) (bool, error) {
	c, err := m.Get(d)
	return err == nil && c == 0 && !m.pending[d] && !m.reserved[d], err
}

// ForEachUnused calls fn for each run [start, start+n) of blocks that
// are Unused, in order.
func (m *Map) ForEachUnused(fn func(start, n uint64) error) error {
	var runStart, runLen uint64
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		err := fn(runStart, runLen)
		runLen = 0
		return err
	}
	for i := uint64(0); i*countsPerBlock < m.blocks; i++ {
		counts, _, err := m.counts(i)
		if err != nil {
			return err
		}
		for j, c := range counts {
			d := i*countsPerBlock + uint64(j)
			if d >= m.blocks {
				break
			}
			if c == 0 && !m.pending[d] && !m.reserved[d] {
				if runLen == 0 {
					runStart = d
				}
				runLen++
				continue
			}
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
