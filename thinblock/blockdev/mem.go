package blockdev

import "sync"

// pageSize is the granularity at which Mem tracks writes.
const pageSize = 4096

// Mem is an in-memory Device that keeps synced and unsynced writes apart,
// so a test can crash it: Crash drops every write since the last Sync,
// and Reopen gives what a restart would find.
type Mem struct {
	mu           sync.Mutex
	durable      map[int64][]byte // page index -> page
	volatile     map[int64][]byte
	durableSize  int64
	volatileSize int64
	crashed      bool
	syncs        int
	onSync       func(n int) error
}

// NewMem returns an empty in-memory device.
func NewMem() *Mem {
	return &Mem{durable: map[int64][]byte{}, volatile: map[int64][]byte{}}
}

// FailSync makes the device call f before each Sync with the number of
// syncs so far; an error from f fails that Sync (and, if f crashed the
// device, everything after it).
func (m *Mem) FailSync(f func(n int) error) {
	m.mu.Lock()
	m.onSync = f
	m.mu.Unlock()
}

func (m *Mem) page(i int64) []byte {
	if p, ok := m.volatile[i]; ok {
		return p
	}
	return m.durable[i]
}

func (m *Mem) ReadAt(b []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return 0, ErrCrashed
	}
	n := 0
	for n < len(b) {
		pos := off + int64(n)
		p := m.page(pos / pageSize)
		in := pos % pageSize
		chunk := min(int64(len(b)-n), pageSize-in)
		if p == nil {
			clear(b[n : n+int(chunk)])
		} else {
			copy(b[n:n+int(chunk)], p[in:in+chunk])
		}
		n += int(chunk)
	}
	return n, nil
}

func (m *Mem) WriteAt(b []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return 0, ErrCrashed
	}
	n := 0
	for n < len(b) {
		pos := off + int64(n)
		idx := pos / pageSize
		p, ok := m.volatile[idx]
		if !ok {
			p = make([]byte, pageSize)
			if old := m.durable[idx]; old != nil {
				copy(p, old)
			}
			m.volatile[idx] = p
		}
		in := pos % pageSize
		chunk := min(int64(len(b)-n), pageSize-in)
		copy(p[in:in+chunk], b[n:n+int(chunk)])
		n += int(chunk)
	}
	if end := off + int64(len(b)); end > m.volatileSize {
		m.volatileSize = end
	}
	return n, nil
}

func (m *Mem) Sync() error {
	m.mu.Lock()
	hook := m.onSync
	count := m.syncs
	m.mu.Unlock()
	if hook != nil {
		if err := hook(count); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return ErrCrashed
	}
	for i, p := range m.volatile {
		m.durable[i] = p
	}
	m.volatile = map[int64][]byte{}
	m.durableSize = max(m.durableSize, m.volatileSize)
	m.volatileSize = m.durableSize
	m.syncs++
	return nil
}

func (m *Mem) Size() (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return max(m.durableSize, m.volatileSize), nil
}

// Truncate sets the length; shrinking drops the pages past the end.
func (m *Mem) Truncate(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return ErrCrashed
	}
	m.volatileSize = size
	if size < m.durableSize {
		m.durableSize = size
		for _, set := range []map[int64][]byte{m.durable, m.volatile} {
			for i := range set {
				if i*pageSize >= size {
					delete(set, i)
				}
			}
		}
	}
	return nil
}

func (m *Mem) Close() error { return nil }

// CrashKeeping is Crash on a disk that had written some unsynced pages
// before power went: keep says which ones reached the media, in any
// order, as a real disk may reorder writes between syncs.
func (m *Mem) CrashKeeping(keep func(page int64) bool) {
	m.mu.Lock()
	for i, p := range m.volatile {
		if keep(i) {
			m.durable[i] = p
			if end := (i + 1) * pageSize; end > m.durableSize {
				m.durableSize = min(end, m.volatileSize)
			}
		}
	}
	m.mu.Unlock()
	m.Crash()
}

// Crash loses every unsynced write and fails all later calls.
func (m *Mem) Crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.volatile = map[int64][]byte{}
	m.volatileSize = m.durableSize
	m.crashed = true
}

// Reopen returns a device holding what survived: the synced writes.
func (m *Mem) Reopen() *Mem {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := NewMem()
	for k, v := range m.durable {
		n.durable[k] = append([]byte(nil), v...)
	}
	n.durableSize, n.volatileSize = m.durableSize, m.durableSize
	return n
}

// ZeroRange makes [off, off+n) read as zeros (an unsynced change, like a
// write).
func (m *Mem) ZeroRange(off, n int64) error {
	_, err := m.WriteAt(make([]byte, n), off)
	return err
}

// IsHole is false: the in-memory device zeroes every fresh block, so the
// crash tests cover that path.
func (m *Mem) IsHole(off, n int64) bool { return false }
