package nbd

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
)

// tlsWriteBuffer is the writer's buffer over TLS: replies queued
// together are gathered into records of up to this many bytes.
const tlsWriteBuffer = 64 << 10

// errTLSRequired ends a connection that asked for an export in plain
// text from a server that requires TLS.
var errTLSRequired = errors.New("client chose an export before STARTTLS, and TLS is required: disconnected")

// refuseBeforeTLS answers the options a server that requires TLS
// refuses before the upgrade (the spec's FORCEDTLS mode): every option
// but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, and EXPORT_NAME,
// which has no error reply, closes the connection. refused says the
// option was answered here.
func (c *conn) refuseBeforeTLS(o option) (refused bool, err error) {
	if !c.s.RequireTLS || c.tls {
		return false, nil
	}
	switch o.code {
	case optStartTLS, optAbort:
		return false, nil
	case optExportName:
		return true, errTLSRequired
	}
	return true, writeOptionReply(c.nc, o.code, repErrTLSReqd, []byte("TLS is required: send NBD_OPT_STARTTLS first"))
}

// startTLS answers NBD_OPT_STARTTLS: an ACK, then the TLS handshake
// over the same socket; the negotiation goes on inside TLS, with what
// was negotiated before forgotten, as the spec asks. A failed
// handshake ends the connection: the ACK is sent, so there is no going
// back to plain text.
func (c *conn) startTLS(o option) error {
	reject := func(typ uint32, msg string) error {
		return writeOptionReply(c.nc, o.code, typ, []byte(msg))
	}
	switch {
	case c.s.TLS == nil:
		return reject(repErrPolicy, "TLS is not offered")
	case !c.fixedNewstyle:
		return reject(repErrPolicy, "TLS needs fixed newstyle negotiation")
	case c.tls:
		return reject(repErrInvalid, "TLS is already running")
	case len(o.data) != 0:
		return reject(repErrInvalid, "STARTTLS takes no data")
	}
	if err := writeOptionReply(c.nc, o.code, repAck, nil); err != nil {
		return err
	}
	// Bytes the client sent after STARTTLS (the start of its TLS
	// handshake) may already be in the negotiation's buffer.
	var early []byte
	if n := c.br.Buffered(); n > 0 {
		b, _ := c.br.Peek(n)
		early = append([]byte(nil), b...)
	}
	tc := tls.Server(&prefixedConn{Conn: c.sock, prefix: early}, c.s.TLS)
	// The handshake falls under the negotiation's deadline, set on sock.
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc, c.tls = tc, true
	c.br = bufio.NewReaderSize(tc, 4096)
	c.structured, c.allocation, c.metaExport = false, false, ""
	return nil
}

// prefixedConn reads prefix before the connection's own bytes.
type prefixedConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixedConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
