package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// queuedOrGranted waits until b has n waiters queued or one of them has
// been granted (a bug the caller then sees in got), and reports whether
// that happened before the patience ran out.
func queuedOrGranted(b *budget, n int, got chan int64) bool {
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		b.mu.Lock()
		queued := len(b.waiters)
		b.mu.Unlock()
		if queued >= n || len(got) > 0 {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// patience bounds the waits on the server's goroutines, which a loaded
// machine (go test runs two packages at once, here under the race
// detector) may delay for seconds; a test passes as soon as what it
// waits for happens.
const patience = 60 * time.Second

func TestBudgetWaitsInOrderAndStops(t *testing.T) {
	b := newBudget(10)
	require.True(t, b.acquire(8, nil))
	got := make(chan int64, 2)
	go func() { b.acquire(5, nil); got <- 5 }()
	// The second request is made only once the first waits, whatever
	// the scheduler does: a small request that skipped the queue would
	// be granted at once, and show in got.
	require.True(t, queuedOrGranted(b, 1, got), "the large request neither waits nor is granted")
	go func() { b.acquire(1, nil); got <- 1 }()
	require.True(t, queuedOrGranted(b, 2, got), "the small request neither waits nor is granted")
	assert.Len(t, got, 0, "the small request waits behind the large one")
	b.release(8)
	assert.Equal(t, int64(6), <-got+<-got, "both granted once the large one fits")
	stop := make(chan struct{})
	close(stop)
	assert.False(t, b.acquire(5, stop), "a stopped wait takes nothing")
	assert.Equal(t, int64(6), b.inUse())
}

// serveUnix serves srv on a unix socket for the test.
func serveUnix(t *testing.T, srv *Server) string {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return sock
}

// dial negotiates export name with EXPORT_NAME and simple replies.
func dial(t *testing.T, sock, name string) net.Conn {
	conn, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	hello := make([]byte, 18)
	_, err = io.ReadFull(conn, hello)
	require.NoError(t, err)
	conn.Write(be.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	opt := be.AppendUint64(nil, magicOpt)
	opt = be.AppendUint32(opt, optExportName)
	opt = be.AppendUint32(opt, uint32(len(name)))
	conn.Write(append(opt, name...))
	_, err = io.ReadFull(conn, make([]byte, 10))
	require.NoError(t, err)
	return conn
}

func readRequest(cookie, off uint64, n uint32) []byte {
	req := be.AppendUint32(nil, magicRequest)
	req = be.AppendUint16(req, 0)
	req = be.AppendUint16(req, cmdRead)
	req = be.AppendUint64(req, cookie)
	req = be.AppendUint64(req, off)
	return binary.BigEndian.AppendUint32(req, n)
}

// A client that never reads its replies holds at most its connection's
// bound, and another client is served meanwhile.
func TestASlowReaderIsHeldAtItsBound(t *testing.T) {
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 4<<20)}}
	srv := &Server{Exports: func() []Export { return []Export{exp} }, MaxRequest: 1 << 20,
		MaxInFlightPerConn: 2 << 20, MaxInFlight: 3 << 20}
	sock := serveUnix(t, srv)
	slow := dial(t, sock, "a")
	var reqs []byte
	for i := 0; i < 200; i++ {
		reqs = append(reqs, readRequest(uint64(i), 0, 1<<20)...)
	}
	go slow.Write(reqs)
	// The connection fills its bound however slowly the server gets to
	// it; then it must stay there while the client reads nothing.
	peak := int64(0)
	reached := assert.Eventually(t, func() bool {
		peak = max(peak, srv.InFlight())
		return peak >= 2<<20
	}, patience, time.Millisecond, "the slow client's requests fill its bound (peak %d)", peak)
	for i := 0; reached && i < 50; i++ {
		peak = max(peak, srv.InFlight())
		time.Sleep(10 * time.Millisecond)
	}
	assert.Equal(t, int64(2<<20), peak, "held at the connection's bound")
	fast := dial(t, sock, "a")
	fast.Write(readRequest(7, 4096, 4096))
	fast.SetReadDeadline(time.Now().Add(patience))
	reply := make([]byte, 16+4096)
	_, err := io.ReadFull(fast, reply)
	require.NoError(t, err, "another client is served")
	assert.Equal(t, uint64(7), be.Uint64(reply[8:]))
	// Once the slow client reads, everything it asked for comes back.
	slow.SetReadDeadline(time.Now().Add(patience))
	n, _ := io.CopyN(io.Discard, slow, 200*(16+1<<20))
	assert.Equal(t, int64(200*(16+1<<20)), n)
	assert.Eventually(t, func() bool { return srv.InFlight() == 0 }, patience, 10*time.Millisecond)
}

// A client that sends nothing after the greeting is disconnected by the
// server: the connection ends (EOF), not the client's own deadline.
func TestTheHandshakeIsBounded(t *testing.T) {
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 1<<16)}}
	srv := &Server{Exports: func() []Export { return []Export{exp} }, HandshakeTimeout: 200 * time.Millisecond}
	sock := serveUnix(t, srv)
	conn, err := net.Dial("unix", sock)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(patience))
	n, err := io.Copy(io.Discard, conn)
	require.NoError(t, err, "the server hangs up (not our deadline)")
	// The timeout covers the greeting too: a server delayed past it
	// before writing sends nothing.
	assert.Contains(t, []int64{0, 18}, n, "the greeting, whole or not at all")
}
