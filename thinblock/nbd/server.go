// Package nbd serves block devices over the NBD protocol (fixed newstyle
// negotiation, structured replies, the base:allocation meta context,
// multi-conn), the protocol nbdkit and qemu-nbd speak. It serves any
// Backend; it knows nothing of thin pools.
//
// wire.go holds the wire format, conn.go one connection's state machine:
// one goroutine reads requests, a fixed set of workers per connection
// (Server.Workers) serves them, one writer sends the replies, which may
// complete out of order. validate.go checks each
// request whole (command, flags against the command and the
// negotiation, offset, length, read-only) before it is dispatched, so
// dispatch assumes a valid request. A backend error becomes an error
// reply, never a dropped connection. tls.go owns NBD_OPT_STARTTLS: the
// upgrade, and what a server that requires TLS answers before it.
// budget.go bounds the bytes of requests in flight, per connection and
// for the server: a connection over its bound is not read until its
// replies drain.
package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Backend is a device an export serves.
//
// Thread model: fully parallel, nbdkit's PARALLEL (the weakest of its
// SERIALIZE_CONNECTIONS, SERIALIZE_ALL_REQUESTS, SERIALIZE_REQUESTS and
// PARALLEL: nothing is serialized for the Backend). Every
// method is called from many goroutines at once: the workers of one
// connection (Server.Workers: at most that many of its requests are in
// the Backend at once) serve its requests concurrently and out of
// order, and several connections may share one Backend. A Backend must tolerate
// that on the same and on overlapping ranges, and keep these promises:
//   - Requests on disjoint byte ranges do not affect each other, even
//     when they fall in the same block of the Backend's own storage.
//   - A write (WriteAt, Trim, WriteZeroes) that has returned is seen by
//     every read that starts after it, until a later write covers it.
//   - Overlapping writes in flight together may leave either's data
//     (per 512-byte sector); a read overlapping a write in flight may
//     return the old or the new data (or, on storage without sector
//     atomicity such as a file, a mix of the two). Nothing else is
//     allowed: never zeros, stale data or another write's data once a
//     covering write has returned.
//   - Flush covers every write that returned before Flush was called,
//     on every connection.
type Backend interface {
	Size() uint64
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed write durable, on every connection.
	Flush() error
	// Trim discards [off, off+n); it then reads as zeros.
	Trim(off, n int64) error
	// WriteZeroes makes [off, off+n) read as zeros; unmap allows
	// deallocating instead of writing.
	WriteZeroes(off, n int64, unmap bool) error
	// Extents describes allocation from off, covering at least the
	// first byte and at most n bytes, in order.
	Extents(off, n int64) ([]Extent, error)
}

// Extent is a run of bytes that are allocated, or a hole reading as
// zeros.
type Extent struct {
	Length uint64
	Hole   bool
}

// Export is one named device.
type Export struct {
	Name        string
	Description string
	Backend     Backend
	ReadOnly    bool
	// Hold, if set, claims the device for a client that chooses it (GO
	// or EXPORT_NAME), before the server says yes; release is called
	// once the connection has ended and every request on it has been
	// answered. An error means the device went since Exports listed it:
	// GO is answered NBD_REP_ERR_UNKNOWN, EXPORT_NAME (which has no
	// error reply) is disconnected. Whoever deletes devices checks the
	// claims in the same critical section as Hold, so a client never
	// ends up serving a deleted device. Nil: nothing to claim.
	Hold func(client net.Conn) (release func(), err error)
}

// Server serves exports to NBD clients.
type Server struct {
	// Exports lists what clients may open; it is called on every LIST,
	// INFO and GO, so exports may come and go.
	Exports func() []Export
	// Logger gets one line per connection problem; nil discards.
	Logger *log.Logger
	// MaxRequest bounds a read or write (default 32 MiB).
	MaxRequest uint32
	// Workers is the number of goroutines serving one connection's
	// requests, so the most requests it has in the Backend at once
	// (default DefaultWorkers).
	Workers int
	// MaxInFlightPerConn bounds the bytes of one connection's requests
	// between reading them and writing their replies (default 64 MiB,
	// and never below MaxRequest); MaxInFlight bounds them for the whole
	// server (default 256 MiB, never below MaxInFlightPerConn). A
	// connection over its bound is not read until its replies drain.
	MaxInFlightPerConn int64
	MaxInFlight        int64
	// HandshakeTimeout bounds the negotiation: a client that has not
	// chosen an export by then is disconnected (default 10 s; negative:
	// no bound).
	HandshakeTimeout time.Duration
	// PooledBuffers bounds the free data buffers kept for reuse
	// (default 64 MiB).
	PooledBuffers int64
	// TLS, when set, lets clients upgrade with NBD_OPT_STARTTLS; the
	// option haggling then goes on, and transmission runs, inside TLS.
	// Nil: STARTTLS is refused (NBD_REP_ERR_POLICY).
	TLS *tls.Config
	// RequireTLS refuses every option but STARTTLS and ABORT until TLS
	// is running (the spec's FORCEDTLS mode); it needs TLS. Without it
	// a server with TLS serves plain clients too (SELECTIVETLS, with no
	// export TLS-only).
	RequireTLS bool

	// stopGrace replaces stopWriteGrace, for tests.
	stopGrace time.Duration

	// Bytes read and written for clients, for statistics.
	bytesRead, bytesWritten atomic.Uint64

	// buffers recycles data buffers across requests and connections.
	buffers buffers

	// inflight is the server-wide budget, made on first use.
	inflightOnce sync.Once
	inflight     *budget

	mu        sync.Mutex
	listeners map[net.Listener]bool
	conns     map[*conn]bool
	closing   bool
	wg        sync.WaitGroup
}

// Stats reports the bytes read and written for clients so far.
func (s *Server) Stats() (read, written uint64) {
	return s.bytesRead.Load(), s.bytesWritten.Load()
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

func (s *Server) logf(format string, args ...any) {
	if s.Logger != nil {
		s.Logger.Printf(format, args...)
	}
}

// Defaults of the memory bounds.
const (
	DefaultMaxInFlightPerConn = 64 << 20
	DefaultMaxInFlight        = 256 << 20
	DefaultHandshakeTimeout   = 10 * time.Second
)

func (s *Server) perConnLimit() int64 {
	n := s.MaxInFlightPerConn
	if n <= 0 {
		n = DefaultMaxInFlightPerConn
	}
	return max(n, int64(s.maxRequest()))
}

func (s *Server) serverBudget() *budget {
	s.inflightOnce.Do(func() {
		n := s.MaxInFlight
		if n <= 0 {
			n = DefaultMaxInFlight
		}
		s.buffers.limit = s.PooledBuffers
		s.inflight = newBudget(max(n, s.perConnLimit()))
	})
	return s.inflight
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout == 0 {
		return DefaultHandshakeTimeout
	}
	return s.HandshakeTimeout
}

// InFlight reports the bytes of requests read and not yet answered,
// across all connections.
func (s *Server) InFlight() int64 { return s.serverBudget().inUse() }

// ReleaseBuffers drops the free buffers kept for reuse and reports how
// many bytes they held: for a server gone idle after a burst.
func (s *Server) ReleaseBuffers() int64 { return s.buffers.drop() }

func (s *Server) maxRequest() uint32 {
	if s.MaxRequest == 0 {
		return 32 << 20
	}
	return s.MaxRequest
}

func (s *Server) lookup(name string) (Export, bool) {
	exports := s.Exports()
	for _, e := range exports {
		if e.Name == name {
			return e, true
		}
	}
	// The empty name selects the default export when there is one.
	if name == "" && len(exports) == 1 {
		return exports[0], true
	}
	return Export{}, false
}

// Clients lists the connections that chose export name and are in
// transmission, so a caller can say who holds an export open.
func (s *Server) Clients(name string) []net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Conn
	for c := range s.conns {
		if c.export.Backend != nil && c.export.Name == name {
			out = append(out, c.nc)
		}
	}
	return out
}

// ErrTLSConfig is returned by Serve when TLS is required but not
// configured.
var ErrTLSConfig = errors.New("nbd: RequireTLS without a TLS configuration")

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	if s.RequireTLS && s.TLS == nil {
		return ErrTLSConfig
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners, s.conns = map[net.Listener]bool{}, map[*conn]bool{}
	}
	s.listeners[l] = true
	s.mu.Unlock()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			if err := c.serve(); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.logf("nbd: %s: %v", nc.RemoteAddr(), err)
			}
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Shutdown stops accepting, lets in-flight requests finish and their
// replies go out, flushes, and closes every connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.sock.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// wireErrno maps a backend error to the protocol's error numbers.
func wireErrno(err error) uint32 {
	var e syscall.Errno
	if errors.As(err, &e) {
		switch e {
		case syscall.EPERM, syscall.EROFS, syscall.EACCES:
			return errPerm
		case syscall.ENOMEM:
			return errNoMem
		case syscall.EINVAL:
			return errInval
		case syscall.ENOSPC:
			return errNoSpc
		case syscall.EOVERFLOW:
			return errOverflow
		case syscall.ENOTSUP:
			return errNotSup
		case syscall.ESHUTDOWN:
			return errShutdown
		}
	}
	return errIO
}
