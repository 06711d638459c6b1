package nbd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// conn is one client connection.
type conn struct {
	s *Server
	// sock is the accepted socket: deadlines and a forced close go to
	// it, from any goroutine. nc is what the protocol is spoken over:
	// sock, or a TLS connection over it after STARTTLS; only the
	// connection's own goroutines use it.
	sock net.Conn
	nc   net.Conn
	br   *bufio.Reader

	// Negotiated state.
	fixedNewstyle bool
	tls           bool // STARTTLS succeeded: nc is a *tls.Conn
	noZeroes      bool
	structured    bool
	allocation    bool   // base:allocation is active
	metaExport    string // the export SET_META_CONTEXT named
	export        Export
	maxRequest    uint32
	// release ends the claim Export.Hold made on the chosen export.
	release func()

	// inflight bounds the bytes of this connection's requests in
	// flight; each also holds its bytes of the server's budget.
	inflight *budget

	// replies carries each reply as the pieces to send, so read data is
	// not copied into a reply buffer.
	replies  chan outgoing
	writeErr chan error
	workers  sync.WaitGroup
	stopOnce sync.Once
	stopped  chan struct{}
}

func newConn(s *Server, nc net.Conn) *conn {
	// The negotiation needs a small buffer; transmission gets a large
	// one (see transmit), so a client idle in the handshake costs little.
	return &conn{s: s, sock: nc, nc: nc, br: bufio.NewReaderSize(nc, 4096), maxRequest: s.maxRequest(),
		inflight: newBudget(s.perConnLimit()), stopped: make(chan struct{})}
}

// requestOverhead is the least a request costs against the in-flight
// budgets: its header, reply and bookkeeping.
const requestOverhead = 512

// cost is what req holds of the budgets from when it is read until its
// reply is written: its data, or the overhead for a request without.
func (c *conn) cost(req request) int64 {
	if req.typ == cmdRead || req.typ == cmdWrite {
		return max(int64(min(req.length, c.maxRequest)), requestOverhead)
	}
	return requestOverhead
}

// take holds n bytes of the connection's and the server's budgets,
// waiting for replies to drain; false means the server is stopping.
func (c *conn) take(n int64) bool {
	if !c.inflight.acquire(n, c.stopped) {
		return false
	}
	if !c.s.serverBudget().acquire(n, c.stopped) {
		c.inflight.release(n)
		return false
	}
	return true
}

// give returns what take held.
func (c *conn) give(n int64) {
	c.s.serverBudget().release(n)
	c.inflight.release(n)
}

// stopReading makes the reader stop taking requests (for a graceful
// shutdown): in-flight ones still finish and reply.
func (c *conn) stopReading() {
	c.stopOnce.Do(func() {
		close(c.stopped)
		c.sock.SetReadDeadline(time.Now())
		// A client that stopped reading its replies would hold the
		// shutdown up for good.
		grace := stopWriteGrace
		if c.s.stopGrace > 0 {
			grace = c.s.stopGrace
		}
		c.sock.SetWriteDeadline(time.Now().Add(grace))
	})
}

// stopWriteGrace is how long replies may take to drain once the server
// is shutting down.
const stopWriteGrace = 10 * time.Second

// outgoing is one reply: the pieces to send, the pooled buffer to give
// back once they are sent (nil if none), and the request's bytes of the
// in-flight budgets.
type outgoing struct {
	pieces  [][]byte
	release []byte
	cost    int64
}

var errAbort = errors.New("client aborted the negotiation")

func (c *conn) serve() error {
	err := c.run()
	c.close(err)
	// run has waited for every request's reply.
	if c.release != nil {
		c.release()
	}
	return err
}

// hold claims export e for this connection (Export.Hold); an error
// means it is gone.
func (c *conn) hold(e Export) error {
	if e.Hold == nil {
		return nil
	}
	release, err := e.Hold(c.sock)
	if err != nil {
		return err
	}
	c.release = release
	return nil
}

// close ends the connection. After a clean end over TLS, closing nc
// sends TLS's close_notify first (bounded by crypto/tls at 5 seconds);
// after an error the socket is closed at once: a write that failed or
// timed out leaves nothing to say, and close_notify would wait on a
// client that does not read.
func (c *conn) close(err error) {
	if c.tls && err == nil {
		c.nc.Close()
		return
	}
	c.sock.Close()
}

func (c *conn) run() error {
	if t := c.s.handshakeTimeout(); t > 0 {
		c.sock.SetDeadline(time.Now().Add(t))
	}
	e, err := c.handshake()
	if err != nil {
		if errors.Is(err, errAbort) {
			return nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			select {
			case <-c.stopped:
				return nil
			default:
			}
			return fmt.Errorf("no export chosen within %v: disconnected", c.s.handshakeTimeout())
		}
		return err
	}
	c.sock.SetDeadline(time.Time{})
	select {
	case <-c.stopped:
		return nil
	default:
	}
	c.s.mu.Lock() // Clients reads it
	c.export = e
	c.s.mu.Unlock()
	// What the client sent after choosing the export is kept.
	var r io.Reader = c.nc
	if n := c.br.Buffered(); n > 0 {
		rest, _ := c.br.Peek(n)
		r = io.MultiReader(bytes.NewReader(append([]byte(nil), rest...)), c.nc)
	}
	c.br = bufio.NewReaderSize(r, 1<<20)
	return c.transmit()
}

// handshake runs the fixed newstyle negotiation and returns the chosen
// export.
func (c *conn) handshake() (Export, error) {
	var hello [18]byte
	be.PutUint64(hello[0:], magicInit)
	be.PutUint64(hello[8:], magicOpt)
	be.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return Export{}, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return Export{}, err
	}
	flags := be.Uint32(cf[:])
	if flags&^(flagFixedNewstyle|flagNoZeroes) != 0 {
		return Export{}, fmt.Errorf("%w: unknown client flags %#x", errProtocol, flags)
	}
	c.fixedNewstyle = flags&flagFixedNewstyle != 0
	c.noZeroes = flags&flagNoZeroes != 0
	if c.s.RequireTLS && !c.fixedNewstyle {
		return Export{}, errors.New("client cannot negotiate TLS (no fixed newstyle), which this server requires")
	}
	for {
		o, err := readOption(c.br)
		if err != nil {
			return Export{}, err
		}
		if refused, err := c.refuseBeforeTLS(o); refused || err != nil {
			if err != nil {
				return Export{}, err
			}
			continue
		}
		e, done, err := c.option(o)
		if err != nil || done {
			return e, err
		}
	}
}

// option answers one option; done is set when transmission starts.
func (c *conn) option(o option) (Export, bool, error) {
	w := c.nc
	reject := func(typ uint32, msg string) (Export, bool, error) {
		return Export{}, false, writeOptionReply(w, o.code, typ, []byte(msg))
	}
	switch o.code {
	case optExportName:
		e, ok := c.s.lookup(string(o.data))
		if !ok {
			// This option has no error reply: the spec says close.
			return Export{}, false, fmt.Errorf("client asked for unknown export %q", o.data)
		}
		if err := c.hold(e); err != nil {
			return Export{}, false, fmt.Errorf("client asked for export %q, gone: %v", o.data, err)
		}
		buf := make([]byte, 10, 10+124)
		be.PutUint64(buf[0:], e.Backend.Size())
		be.PutUint16(buf[8:], c.transmissionFlags(e))
		if !c.noZeroes {
			buf = append(buf, make([]byte, 124)...)
		}
		_, err := w.Write(buf)
		return e, true, err
	case optAbort:
		writeOptionReply(w, o.code, repAck, nil)
		return Export{}, false, errAbort
	case optList:
		if len(o.data) != 0 {
			return reject(repErrInvalid, "LIST takes no data")
		}
		for _, e := range c.s.Exports() {
			item := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			be.PutUint32(item, uint32(len(e.Name)))
			item = append(append(item, e.Name...), e.Description...)
			if err := writeOptionReply(w, o.code, repServer, item); err != nil {
				return Export{}, false, err
			}
		}
		return Export{}, false, writeOptionReply(w, o.code, repAck, nil)
	case optStartTLS:
		return Export{}, false, c.startTLS(o)
	case optStructuredReply:
		if len(o.data) != 0 {
			return reject(repErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return Export{}, false, writeOptionReply(w, o.code, repAck, nil)
	case optInfo, optGo:
		return c.infoOrGo(o)
	case optListMetaContext, optSetMetaContext:
		return Export{}, false, c.metaContext(o)
	default:
		return reject(repErrUnsup, fmt.Sprintf("option %d is not supported", o.code))
	}
}

func (c *conn) transmissionFlags(e Export) uint16 {
	f := uint16(tfHasFlags | tfSendFlush | tfSendFUA | tfCanMultiConn | tfSendCache | tfSendDF)
	if e.ReadOnly {
		f |= tfReadOnly
	} else {
		f |= tfSendTrim | tfSendWriteZeroes | tfSendFastZero
	}
	return f
}

func (c *conn) infoOrGo(o option) (Export, bool, error) {
	w := c.nc
	name, off, err := lengthPrefixed(o.data, 0)
	if err != nil || len(o.data) < off+2 {
		return Export{}, false, writeOptionReply(w, o.code, repErrInvalid, []byte("malformed request"))
	}
	n := int(be.Uint16(o.data[off:]))
	off += 2
	if len(o.data) != off+2*n {
		return Export{}, false, writeOptionReply(w, o.code, repErrInvalid, []byte("malformed information requests"))
	}
	want := map[uint16]bool{}
	for i := 0; i < n; i++ {
		want[be.Uint16(o.data[off+2*i:])] = true
	}
	e, ok := c.s.lookup(name)
	if !ok {
		return Export{}, false, writeOptionReply(w, o.code, repErrUnknown, []byte("no export named "+name))
	}
	if o.code == optGo {
		// Claimed before the client hears yes; released when the
		// connection ends, even if a reply below fails.
		if err := c.hold(e); err != nil {
			c.s.logf("nbd: export %q chosen as it went: %v", name, err)
			return Export{}, false, writeOptionReply(w, o.code, repErrUnknown, []byte("no export named "+name))
		}
	}
	info := make([]byte, 12)
	be.PutUint16(info[0:], infoExport)
	be.PutUint64(info[2:], e.Backend.Size())
	be.PutUint16(info[10:], c.transmissionFlags(e))
	if err := writeOptionReply(w, o.code, repInfo, info); err != nil {
		return Export{}, false, err
	}
	if want[infoName] {
		if err := writeOptionReply(w, o.code, repInfo, append([]byte{0, infoName}, e.Name...)); err != nil {
			return Export{}, false, err
		}
	}
	if want[infoDescription] && e.Description != "" {
		if err := writeOptionReply(w, o.code, repInfo, append([]byte{0, infoDescription}, e.Description...)); err != nil {
			return Export{}, false, err
		}
	}
	if want[infoBlockSize] {
		bs := make([]byte, 14)
		be.PutUint16(bs[0:], infoBlockSize)
		be.PutUint32(bs[2:], 1)
		be.PutUint32(bs[6:], 4096)
		be.PutUint32(bs[10:], c.maxRequest)
		if err := writeOptionReply(w, o.code, repInfo, bs); err != nil {
			return Export{}, false, err
		}
	}
	if err := writeOptionReply(w, o.code, repAck, nil); err != nil {
		return Export{}, false, err
	}
	if o.code != optGo {
		return Export{}, false, nil
	}
	if c.metaExport != name {
		c.allocation = false
	}
	return e, true, nil
}

func (c *conn) metaContext(o option) error {
	w := c.nc
	if o.code == optSetMetaContext && !c.structured {
		return writeOptionReply(w, o.code, repErrInvalid, []byte("structured replies must be negotiated first"))
	}
	name, off, err := lengthPrefixed(o.data, 0)
	if err != nil || len(o.data) < off+4 {
		return writeOptionReply(w, o.code, repErrInvalid, []byte("malformed request"))
	}
	n := int(be.Uint32(o.data[off:]))
	off += 4
	var queries []string
	for i := 0; i < n; i++ {
		var q string
		if q, off, err = lengthPrefixed(o.data, off); err != nil {
			return writeOptionReply(w, o.code, repErrInvalid, []byte("malformed query"))
		}
		queries = append(queries, q)
	}
	if off != len(o.data) {
		return writeOptionReply(w, o.code, repErrInvalid, []byte("trailing data"))
	}
	if _, ok := c.s.lookup(name); !ok {
		return writeOptionReply(w, o.code, repErrUnknown, []byte("no export named "+name))
	}
	match := false
	if n == 0 {
		match = o.code == optListMetaContext
	}
	for _, q := range queries {
		if q == metaContextAllocation || (o.code == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if o.code == optSetMetaContext {
		c.allocation, c.metaExport = match, name
	}
	if match {
		reply := make([]byte, 4, 4+len(metaContextAllocation))
		be.PutUint32(reply, allocationContextID)
		if err := writeOptionReply(w, o.code, repMetaContext, append(reply, metaContextAllocation...)); err != nil {
			return err
		}
	}
	return writeOptionReply(w, o.code, repAck, nil)
}

// DefaultWorkers is how many requests one connection serves at once
// unless Server.Workers says otherwise: enough to keep a queue-depth-16
// client (fio's and the kernel's usual depth) busy, few enough that a
// client flooding one connection costs a fixed set of goroutines.
const DefaultWorkers = 16

func (s *Server) workers() int {
	if s.Workers <= 0 {
		return DefaultWorkers
	}
	return s.Workers
}

// job is one validated request on its way to a worker.
type job struct {
	req     request
	payload []byte
}

// transmit serves requests until the client disconnects: the reader
// (this goroutine) hands each valid request to one of a fixed set of
// workers, waiting while all are busy, and the writer sends the replies
// in the order they complete.
func (c *conn) transmit() error {
	c.replies = make(chan outgoing, 64)
	c.writeErr = make(chan error, 1)
	go c.writer()
	// Unbuffered: the next request is read off the socket only once a
	// worker has taken the one before it.
	jobs := make(chan job)
	for i := 0; i < c.s.workers(); i++ {
		c.workers.Add(1)
		go c.worker(jobs)
	}
	err := c.readRequests(jobs)
	close(jobs)
	c.workers.Wait()
	if errors.Is(err, errStopped) {
		// Graceful shutdown: what was acknowledged is made durable.
		if ferr := c.export.Backend.Flush(); ferr != nil {
			c.s.logf("nbd: flush at shutdown: %v", ferr)
		}
		err = nil
	}
	close(c.replies)
	if werr := <-c.writeErr; err == nil {
		err = werr
	}
	return err
}

// worker serves requests until jobs is closed.
func (c *conn) worker(jobs <-chan job) {
	defer c.workers.Done()
	for j := range jobs {
		c.handle(j.req, j.payload)
		if j.payload != nil {
			c.s.buffers.put(j.payload)
		}
	}
}

var errStopped = errors.New("server shutting down")

func (c *conn) readRequests(jobs chan<- job) error {
	hdr := make([]byte, requestSize)
	for {
		if _, err := io.ReadFull(c.br, hdr); err != nil {
			select {
			case <-c.stopped:
				return errStopped
			default:
			}
			return err
		}
		req, err := parseRequest(hdr)
		if err != nil {
			return err // a bad magic loses sync: close
		}
		if req.typ == cmdDisc {
			return io.EOF
		}
		if req.typ == cmdWrite && req.length > c.maxRequest {
			c.reply(req, errInval, nil)
			return fmt.Errorf("%w: write of %d bytes (limit %d)", errProtocol, req.length, c.maxRequest)
		}
		// The request's bytes are held before its payload is read, until
		// its reply is written: over the bound, this connection is not
		// read until its replies drain.
		req.cost = c.cost(req)
		if !c.take(req.cost) {
			return errStopped
		}
		var payload []byte
		if req.typ == cmdWrite {
			payload = c.s.buffers.get(int(req.length))
			if _, err := io.ReadFull(c.br, payload); err != nil {
				return err
			}
		}
		if r := c.validate(req); r != nil {
			c.s.logf("nbd: export %q: refused %s", c.export.Name, r.why)
			if payload != nil {
				c.s.buffers.put(payload)
			}
			c.reply(req, r.errno, nil)
			continue
		}
		jobs <- job{req: req, payload: payload}
	}
}

// writer is the connection's one writer: replies go out whole, in the
// order they complete, gathered into one writev while more are queued.
func (c *conn) writer() {
	var (
		err     error
		batch   net.Buffers
		release [][]byte
	)
	var cost int64
	send := c.sender()
	flush := func() {
		if err == nil && len(batch) > 0 {
			err = send(batch)
		}
		batch = batch[:0]
		for _, b := range release {
			c.s.buffers.put(b)
		}
		release = release[:0]
		c.give(cost)
		cost = 0
	}
	for r := range c.replies {
		batch = append(batch, r.pieces...)
		if r.release != nil {
			release = append(release, r.release)
		}
		cost += r.cost
		if len(c.replies) == 0 || len(batch) >= 256 {
			flush()
		}
	}
	flush()
	c.writeErr <- err
}

// sender returns how the writer sends a batch of replies: one writev
// on a plain socket; over TLS, through a buffer, so the small headers
// and the replies queued together go out in full records rather than a
// record (and a system call) each.
func (c *conn) sender() func(net.Buffers) error {
	if !c.tls {
		return func(b net.Buffers) error {
			_, err := b.WriteTo(c.nc)
			return err
		}
	}
	bw := bufio.NewWriterSize(c.nc, tlsWriteBuffer)
	return func(b net.Buffers) error {
		for _, p := range b {
			if _, err := bw.Write(p); err != nil {
				return err
			}
		}
		return bw.Flush()
	}
}

// reply sends the answer to req: data for a read, or an error.
func (c *conn) reply(req request, errno uint32, data []byte) {
	switch {
	case !c.structured:
		pieces := [][]byte{simpleReply(req.cookie, errno, nil)}
		if len(data) > 0 {
			pieces = append(pieces, data)
		}
		c.replies <- outgoing{pieces: pieces, release: data, cost: req.cost}
	case errno != 0:
		payload := make([]byte, 6)
		be.PutUint32(payload, errno)
		c.replies <- outgoing{pieces: [][]byte{structuredChunk(req.cookie, chunkFlagDone, chunkError, payload)}, cost: req.cost}
	case req.typ == cmdRead && len(data) > 0:
		// The chunk header says 8+len(data) bytes follow: the offset,
		// then the data, sent as it is.
		hdr := structuredChunkHeader(req.cookie, chunkFlagDone, chunkOffsetData, 8+len(data))
		c.replies <- outgoing{pieces: [][]byte{be.AppendUint64(hdr, req.offset), data}, release: data, cost: req.cost}
	default:
		c.replies <- outgoing{pieces: [][]byte{structuredChunk(req.cookie, chunkFlagDone, chunkNone, nil)}, cost: req.cost}
	}
}

// handle serves one request that validate accepted.
func (c *conn) handle(req request, payload []byte) {
	b := c.export.Backend
	var err error
	switch req.typ {
	case cmdRead:
		buf := c.s.buffers.get(int(req.length))
		if _, err = b.ReadAt(buf, int64(req.offset)); err == nil {
			c.s.bytesRead.Add(uint64(len(buf)))
			c.reply(req, 0, buf)
			return
		}
		c.s.buffers.put(buf)
	case cmdWrite:
		if _, err = b.WriteAt(payload, int64(req.offset)); err == nil {
			c.s.bytesWritten.Add(uint64(len(payload)))
		}
		if err == nil && req.flags&cmdFlagFUA != 0 {
			err = b.Flush()
		}
	case cmdFlush:
		err = b.Flush()
	case cmdTrim:
		if err = b.Trim(int64(req.offset), int64(req.length)); err == nil && req.flags&cmdFlagFUA != 0 {
			err = b.Flush()
		}
	case cmdWriteZeroes:
		unmap := req.flags&cmdFlagNoHole == 0
		if req.flags&cmdFlagFastZero != 0 && !unmap {
			// Writing zeros block by block is not fast: say so, as the
			// client then picks its own way.
			c.reply(req, errNotSup, nil)
			return
		}
		if err = b.WriteZeroes(int64(req.offset), int64(req.length), unmap); err == nil && req.flags&cmdFlagFUA != 0 {
			err = b.Flush()
		}
	case cmdCache:
		// Nothing to prefetch: data is read from the pool on demand.
	case cmdBlockStatus:
		c.blockStatus(req)
		return
	}
	if err != nil {
		c.s.logf("nbd: %s %s at %d+%d: %v", c.export.Name, commandName(req.typ), req.offset, req.length, err)
		c.reply(req, wireErrno(err), nil)
		return
	}
	c.reply(req, 0, nil)
}

func (c *conn) blockStatus(req request) {
	exts, err := c.export.Backend.Extents(int64(req.offset), int64(req.length))
	if err != nil || len(exts) == 0 {
		if err == nil {
			err = errors.New("no extents")
		}
		c.reply(req, wireErrno(err), nil)
		return
	}
	if req.flags&cmdFlagReqOne != 0 {
		exts = exts[:1]
	}
	payload := make([]byte, 4, 4+8*len(exts))
	be.PutUint32(payload, allocationContextID)
	for _, e := range exts {
		var d [8]byte
		be.PutUint32(d[0:], uint32(e.Length)) // at most the request's length
		var state uint32
		if e.Hole {
			state = stateHole | stateZero
		}
		be.PutUint32(d[4:], state)
		payload = append(payload, d[:]...)
	}
	c.replies <- outgoing{pieces: [][]byte{structuredChunk(req.cookie, chunkFlagDone, chunkBlockStatus, payload)}, cost: req.cost}
}
