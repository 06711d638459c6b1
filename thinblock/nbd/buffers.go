package nbd

import (
	"math/bits"
	"sync"
)

// minBufferShift and maxBufferShift bound the pooled size classes, 4 KiB
// to 32 MiB (the largest request the server accepts by default).
const (
	minBufferShift = 12
	maxBufferShift = 25
)

// defaultPooledBytes bounds the free buffers kept for reuse.
const defaultPooledBytes = 64 << 20

// buffers recycles request payloads and read replies by power-of-two
// size class, so a busy connection does not allocate and zero a new
// buffer for every request. It keeps at most limit bytes of free
// buffers: what is given back beyond that goes to the garbage collector,
// so a burst of large requests does not stay resident after it ends
// (a sync.Pool held on to gigabytes until two collections ran, and an
// idle server runs none).
type buffers struct {
	mu    sync.Mutex
	limit int64 // 0: defaultPooledBytes
	held  int64 // guarded by mu
	free  [maxBufferShift - minBufferShift + 1][][]byte
}

func classOf(n int) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

// get returns a buffer of length n; its contents are undefined.
func (p *buffers) get(n int) []byte {
	c := classOf(n)
	if c >= len(p.free) {
		return make([]byte, n)
	}
	p.mu.Lock()
	if k := len(p.free[c]); k > 0 {
		b := p.free[c][k-1]
		p.free[c][k-1] = nil
		p.free[c] = p.free[c][:k-1]
		p.held -= int64(cap(b))
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, 1<<(c+minBufferShift))
}

// put gives back a buffer from get.
func (p *buffers) put(b []byte) {
	c := classOf(cap(b))
	if c >= len(p.free) || cap(b) != 1<<(c+minBufferShift) {
		return
	}
	limit := p.limit
	if limit == 0 {
		limit = defaultPooledBytes
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held+int64(cap(b)) > limit {
		return
	}
	p.held += int64(cap(b))
	p.free[c] = append(p.free[c], b[:cap(b)])
}

// drop lets every free buffer go, returning how many bytes were held.
func (p *buffers) drop() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	held := p.held
	for i := range p.free {
		clear(p.free[i])
		p.free[i] = nil
	}
	p.held = 0
	return held
}
