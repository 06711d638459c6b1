package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/testpki"
)

// tlsConfigs makes a server configuration that requires client
// certificates, and a client configuration that has one.
func tlsConfigs(t *testing.T) (server, client *tls.Config) {
	dir := t.TempDir()
	require.NoError(t, testpki.Write(dir))
	load := func(cert, key string) tls.Certificate {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, cert), filepath.Join(dir, key))
		require.NoError(t, err)
		return pair
	}
	ca, err := os.ReadFile(filepath.Join(dir, testpki.CACert))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca))
	server = &tls.Config{Certificates: []tls.Certificate{load(testpki.ServerCert, testpki.ServerKey)},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	client = &tls.Config{Certificates: []tls.Certificate{load(testpki.ClientCert, testpki.ClientKey)},
		RootCAs: pool, ServerName: "localhost"}
	return server, client
}

// dialTLS connects to addr, upgrades with STARTTLS and chooses the
// export with EXPORT_NAME (simple replies).
func dialTLS(t *testing.T, addr, name string, cfg *tls.Config) net.Conn {
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(patience))
	_, err = io.ReadFull(conn, make([]byte, 18))
	require.NoError(t, err)
	conn.Write(be.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	opt := be.AppendUint64(nil, magicOpt)
	opt = be.AppendUint32(opt, optStartTLS)
	conn.Write(be.AppendUint32(opt, 0))
	reply := make([]byte, 20)
	_, err = io.ReadFull(conn, reply)
	require.NoError(t, err)
	require.Equal(t, uint32(repAck), be.Uint32(reply[12:]))
	tc := tls.Client(conn, cfg)
	opt = be.AppendUint64(nil, magicOpt)
	opt = be.AppendUint32(opt, optExportName)
	opt = be.AppendUint32(opt, uint32(len(name)))
	_, err = tc.Write(append(opt, name...))
	require.NoError(t, err)
	_, err = io.ReadFull(tc, make([]byte, 10))
	require.NoError(t, err)
	conn.SetDeadline(time.Time{})
	return tc
}

// Four TLS connections race pipelined writes and reads on the same
// eight blocks: every request is answered once, with its own cookie,
// and no read sees a torn block (the reader, the workers and the one
// writer work over a tls.Conn as over a socket).
func TestConnectionsRaceOnTheSameBlocksOverTLS(t *testing.T) {
	serverCfg, clientCfg := tlsConfigs(t)
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 1<<20)}}
	srv := &Server{Exports: func() []Export { return []Export{exp} }, TLS: serverCfg, RequireTLS: true,
		MaxInFlightPerConn: 1 << 20, MaxRequest: 1 << 20}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)

	const conns, perConn, block = 4, 300, 4096
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		conn := dialTLS(t, l.Addr().String(), "a", clientCfg)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < perConn; i++ {
				req := be.AppendUint32(nil, magicRequest)
				req = be.AppendUint16(req, 0)
				typ := uint16(cmdRead)
				if i%2 == 0 {
					typ = cmdWrite
				}
				req = be.AppendUint16(req, typ)
				req = be.AppendUint64(req, uint64(i))
				req = be.AppendUint64(req, uint64(i%8*block))
				req = be.AppendUint32(req, block)
				if typ == cmdWrite {
					req = append(req, bytes.Repeat([]byte{byte(c + 1)}, block)...)
				}
				if _, err := conn.Write(req); err != nil {
					t.Errorf("connection %d: write: %v", c, err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			seen := map[uint64]bool{}
			conn.SetReadDeadline(time.Now().Add(patience))
			hdr := make([]byte, 16)
			data := make([]byte, block)
			for len(seen) < perConn {
				if _, err := io.ReadFull(conn, hdr); err != nil {
					t.Errorf("connection %d: reply %d: %v", c, len(seen), err)
					return
				}
				cookie := be.Uint64(hdr[8:])
				if be.Uint32(hdr) != magicSimple || be.Uint32(hdr[4:]) != 0 || seen[cookie] || cookie >= perConn {
					t.Errorf("connection %d: bad reply %x", c, hdr)
					return
				}
				seen[cookie] = true
				if cookie%2 == 1 {
					if _, err := io.ReadFull(conn, data); err != nil {
						t.Errorf("connection %d: data: %v", c, err)
						return
					}
					if !bytes.Equal(data, bytes.Repeat(data[:1], block)) || data[0] > conns {
						t.Errorf("connection %d: read %d: a torn or foreign block", c, cookie)
					}
				}
			}
		}()
	}
	wg.Wait()
	// A reply's bytes are given back once its write returns, which may
	// be just after the client has read it.
	assert.Eventually(t, func() bool { return srv.InFlight() == 0 }, patience, 5*time.Millisecond, "every request's bytes given back")
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	assert.NoError(t, srv.Shutdown(ctx))
	r, w := srv.Stats()
	assert.Equal(t, uint64(conns*perConn/2*block), r, "bytes read")
	assert.Equal(t, uint64(conns*perConn/2*block), w, fmt.Sprintf("bytes written (%d)", w))
}

// Shutdown while a TLS client is blocked sending (its replies unread)
// ends the connection within the write grace and does not hang.
func TestShutdownWithATLSClientThatDoesNotRead(t *testing.T) {
	serverCfg, clientCfg := tlsConfigs(t)
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 4<<20)}}
	srv := &Server{Exports: func() []Export { return []Export{exp} }, TLS: serverCfg, RequireTLS: true,
		MaxRequest: 1 << 20, MaxInFlightPerConn: 2 << 20, MaxInFlight: 4 << 20, stopGrace: time.Second}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	slow := dialTLS(t, l.Addr().String(), "a", clientCfg)
	var reqs []byte
	for i := 0; i < 100; i++ {
		reqs = append(reqs, readRequest(uint64(i), 0, 1<<20)...)
	}
	go slow.Write(reqs)
	assert.Eventually(t, func() bool { return srv.InFlight() > 0 }, patience, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	assert.LessOrEqual(t, srv.InFlight(), int64(2<<20), "held at the connection's bound over TLS")
	// The replies stuck behind the client get the grace (a second
	// here), then the socket is closed. Without the grace the replies
	// would wait for good, and Shutdown would give up at the context's
	// deadline with an error: that, not the time taken, is the check.
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	start := time.Now()
	assert.NoError(t, srv.Shutdown(ctx), "the connection ended within the grace")
	t.Logf("shutdown took %v with a grace of %v", time.Since(start), srv.stopGrace)
}

// pipelinedConn sends the STARTTLS option in the same write as the TLS
// ClientHello, and skips the option's ACK before TLS reads: a client
// that does not wait for the ACK.
type pipelinedConn struct {
	net.Conn
	first []byte // prepended to the first write
	skip  int    // bytes to drop before the first read
	t     *testing.T
}

func (p *pipelinedConn) Write(b []byte) (int, error) {
	if p.first != nil {
		out := append(p.first, b...)
		p.first = nil
		if _, err := p.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return p.Conn.Write(b)
}

func (p *pipelinedConn) Read(b []byte) (int, error) {
	if p.skip > 0 {
		ack := make([]byte, p.skip)
		if _, err := io.ReadFull(p.Conn, ack); err != nil {
			return 0, err
		}
		if be.Uint32(ack[12:]) != repAck {
			p.t.Errorf("STARTTLS reply %x", ack)
		}
		p.skip = 0
	}
	return p.Conn.Read(b)
}

// The bytes a client sends right after STARTTLS, before the ACK reaches
// it, are the start of its TLS handshake: the server reads them from
// the negotiation's buffer, not lost behind it.
func TestATLSHandshakeSentWithSTARTTLSIsNotLost(t *testing.T) {
	serverCfg, clientCfg := tlsConfigs(t)
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 1<<16)}}
	srv := &Server{Exports: func() []Export { return []Export{exp} }, TLS: serverCfg, RequireTLS: true}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	conn, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(patience))
	_, err = io.ReadFull(conn, make([]byte, 18))
	require.NoError(t, err)
	conn.Write(be.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	opt := be.AppendUint32(be.AppendUint32(be.AppendUint64(nil, magicOpt), optStartTLS), 0)
	tc := tls.Client(&pipelinedConn{Conn: conn, first: opt, skip: 20, t: t}, clientCfg)
	require.NoError(t, tc.Handshake())
	// LIST inside TLS answers.
	tc.Write(be.AppendUint32(be.AppendUint32(be.AppendUint64(nil, magicOpt), optList), 0))
	reply := make([]byte, 20)
	_, err = io.ReadFull(tc, reply)
	require.NoError(t, err)
	assert.Equal(t, uint32(repServer), be.Uint32(reply[12:]))
}

// A client without fixed newstyle cannot start TLS: a server that
// requires it hangs up after the client's flags.
func TestAServerRequiringTLSHangsUpOnAClientWithoutFixedNewstyle(t *testing.T) {
	serverCfg, _ := tlsConfigs(t)
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 1<<16)}}
	srv := &Server{Exports: func() []Export { return []Export{exp} }, TLS: serverCfg, RequireTLS: true}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	conn, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(patience))
	_, err = io.ReadFull(conn, make([]byte, 18))
	require.NoError(t, err)
	conn.Write(be.AppendUint32(nil, 0))
	n, err := io.Copy(io.Discard, conn)
	assert.NoError(t, err, "closed by the server")
	assert.Zero(t, n)
	// And Serve refuses to run with RequireTLS but no configuration.
	assert.ErrorIs(t, (&Server{RequireTLS: true}).Serve(l), ErrTLSConfig)
}
