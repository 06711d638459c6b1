package blockdev

// Null is a data Device that stores nothing: writes vanish, reads give
// zeros. Benchmarks use it to map many gigabytes without writing them.
type Null struct{ size int64 }

// NewNull returns a Null device of size bytes.
func NewNull(size int64) *Null { return &Null{size: size} }

func (n *Null) ReadAt(b []byte, off int64) (int, error)  { clear(b); return len(b), nil }
func (n *Null) WriteAt(b []byte, off int64) (int, error) { return len(b), nil }
func (n *Null) Sync() error                              { return nil }
func (n *Null) Size() (int64, error)                     { return n.size, nil }
func (n *Null) Truncate(size int64) error                { n.size = size; return nil }
func (n *Null) Close() error                             { return nil }

func (n *Null) ZeroRange(off, size int64) error { return nil }

// IsHole is true: a Null device holds nothing.
func (n *Null) IsHole(off, size int64) bool { return true }
