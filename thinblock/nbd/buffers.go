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

// buffers recycles request payloads and read replies by power-of-two
// size class, so a busy connection does not allocate and zero a new
// buffer for every request.
type buffers struct {
	classes [maxBufferShift - minBufferShift + 1]sync.Pool
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
	if c >= len(p.classes) {
		return make([]byte, n)
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minBufferShift))
}

// put gives back a buffer from get.
func (p *buffers) put(b []byte) {
	c := classOf(cap(b))
	if c >= len(p.classes) || cap(b) != 1<<(c+minBufferShift) {
		return
	}
	b = b[:cap(b)]
	p.classes[c].Put(&b)
}
