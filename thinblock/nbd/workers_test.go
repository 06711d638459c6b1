package nbd

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gatedBackend is a Backend whose reads wait, each until its offset's
// gate is opened, and which counts the reads inside it.
type gatedBackend struct {
	memBackend
	mu      sync.Mutex
	gates   map[int64]chan struct{}
	inside  map[int64]bool
	most    int
	changed chan struct{} // a token whenever inside changes
}

func newGatedBackend(size int) *gatedBackend {
	return &gatedBackend{memBackend: memBackend{data: make([]byte, size)}, gates: map[int64]chan struct{}{},
		inside: map[int64]bool{}, changed: make(chan struct{}, 1)}
}

func (g *gatedBackend) gate(off int64) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gates[off] == nil {
		g.gates[off] = make(chan struct{})
	}
	return g.gates[off]
}

func (g *gatedBackend) ReadAt(p []byte, off int64) (int, error) {
	gate := g.gate(off)
	g.mu.Lock()
	g.inside[off] = true
	g.most = max(g.most, len(g.inside))
	g.mu.Unlock()
	g.notify()
	<-gate
	g.mu.Lock()
	delete(g.inside, off)
	g.mu.Unlock()
	return g.memBackend.ReadAt(p, off)
}

func (g *gatedBackend) notify() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// waitInside waits until n reads are inside and returns their offsets.
func (g *gatedBackend) waitInside(t *testing.T, n int) []int64 {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		g.mu.Lock()
		var offs []int64
		for off := range g.inside {
			offs = append(offs, off)
		}
		g.mu.Unlock()
		if len(offs) >= n {
			return offs
		}
		select {
		case <-g.changed:
		case <-deadline:
			t.Fatalf("%d reads inside the backend, waited for %d", len(offs), n)
		}
	}
}

// A client sending many more requests than a connection has workers
// finds at most that many in the backend at once; replies still come
// in the order requests finish, and all come once the backend unblocks.
func TestAConnectionServesAtMostWorkersRequestsAtOnce(t *testing.T) {
	const workers, requests, size = 4, 40, 512
	g := newGatedBackend(requests * size)
	srv := &Server{Exports: func() []Export { return []Export{{Name: "a", Backend: g}} }, Workers: workers}
	conn := dial(t, serveUnix(t, srv), "a")
	for i := 0; i < requests; i++ {
		_, err := conn.Write(readRequest(uint64(i), uint64(i*size), size))
		require.NoError(t, err)
	}
	inside := g.waitInside(t, workers)
	require.Len(t, inside, workers)

	// The last of those admitted finishes first, and its reply is the
	// first to come: replies are not held in request order.
	last := inside[0]
	for _, off := range inside {
		last = max(last, off)
	}
	close(g.gate(last))
	cookie := readSimpleReply(t, conn, size)
	assert.Equal(t, uint64(last/size), cookie, "the reply of the request that finished first comes first")

	// Once a worker is free the next request goes in, never more than
	// the workers at once.
	seen := map[uint64]bool{cookie: true}
	for i := 0; i < requests; i++ {
		if off := int64(i * size); off != last {
			close(g.gate(off))
		}
	}
	for len(seen) < requests {
		c := readSimpleReply(t, conn, size)
		require.False(t, seen[c], "cookie %d answered twice", c)
		seen[c] = true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Equal(t, workers, g.most, "at most (and, with more queued, exactly) the workers' count of requests inside the backend")
}

// readSimpleReply reads a successful simple reply with n bytes of data
// and returns its cookie.
func readSimpleReply(t *testing.T, conn io.Reader, n int) uint64 {
	t.Helper()
	hdr := make([]byte, 16)
	_, err := io.ReadFull(conn, hdr)
	require.NoError(t, err)
	require.Equal(t, uint32(magicSimple), be.Uint32(hdr))
	require.Zero(t, be.Uint32(hdr[4:]), "error in reply")
	_, err = io.ReadFull(conn, make([]byte, n))
	require.NoError(t, err)
	return be.Uint64(hdr[8:])
}
