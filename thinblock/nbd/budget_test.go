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

func TestBudgetWaitsInOrderAndStops(t *testing.T) {
	b := newBudget(10)
	require.True(t, b.acquire(8, nil))
	got := make(chan int64, 2)
	go func() { b.acquire(5, nil); got <- 5 }()
	time.Sleep(20 * time.Millisecond)
	go func() { b.acquire(1, nil); got <- 1 }()
	time.Sleep(20 * time.Millisecond)
	assert.Len(t, got, 0, "the small request waits behind the large one")
	// Room for the first waiter only: it is served, the second waits.
	// (Releasing room for both would wake both at once, and which
	// reports first is up to the scheduler.)
	b.release(3)
	assert.Equal(t, int64(5), <-got)
	time.Sleep(20 * time.Millisecond)
	assert.Len(t, got, 0, "the second waits for room")
	b.release(1)
	assert.Equal(t, int64(1), <-got)
	stop := make(chan struct{})
	close(stop)
	assert.False(t, b.acquire(5, stop), "a stopped wait takes nothing")
	assert.Equal(t, int64(10), b.inUse())
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
	peak := int64(0)
	for i := 0; i < 50; i++ {
		peak = max(peak, srv.InFlight())
		time.Sleep(10 * time.Millisecond)
	}
	assert.LessOrEqual(t, peak, int64(2<<20), "held at the connection's bound")
	assert.Greater(t, peak, int64(0))
	fast := dial(t, sock, "a")
	fast.Write(readRequest(7, 4096, 4096))
	fast.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply := make([]byte, 16+4096)
	_, err := io.ReadFull(fast, reply)
	require.NoError(t, err, "another client is served")
	assert.Equal(t, uint64(7), be.Uint64(reply[8:]))
	// Once the slow client reads, everything it asked for comes back.
	slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, _ := io.CopyN(io.Discard, slow, 200*(16+1<<20))
	assert.Equal(t, int64(200*(16+1<<20)), n)
	assert.Eventually(t, func() bool { return srv.InFlight() == 0 }, 5*time.Second, 10*time.Millisecond)
}

func TestTheHandshakeIsBounded(t *testing.T) {
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 1<<16)}}
	srv := &Server{Exports: func() []Export { return []Export{exp} }, HandshakeTimeout: 200 * time.Millisecond}
	sock := serveUnix(t, srv)
	conn, err := net.Dial("unix", sock)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	n, err := io.Copy(io.Discard, conn)
	require.NoError(t, err)
	assert.Equal(t, int64(18), n)
	assert.Less(t, time.Since(start), 2*time.Second)
}
