package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// memBackend is a Backend in memory.
type memBackend struct {
	mu   sync.Mutex
	data []byte
}

func (m *memBackend) Size() uint64 { return uint64(len(m.data)) }
func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}
func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}
func (m *memBackend) Flush() error            { return nil }
func (m *memBackend) Trim(off, n int64) error { return m.WriteZeroes(off, n, true) }
func (m *memBackend) WriteZeroes(off, n int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}
func (m *memBackend) Extents(off, n int64) ([]Extent, error) {
	return []Extent{{Length: uint64(min(n, int64(len(m.data))-off))}}, nil
}

// scriptConn is a net.Conn whose client side is a fixed byte stream.
type scriptConn struct {
	r *bytes.Reader
	w io.Writer
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz"} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "fuzz"} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

func fuzzServer() *Server {
	exp := Export{Name: "a", Backend: &memBackend{data: make([]byte, 1<<16)}}
	return &Server{Exports: func() []Export { return []Export{exp} }, MaxRequest: 1 << 16}
}

// clientStream builds a plausible client byte stream for the seeds.
func clientStream(opts [][2]any, requests ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)
	for _, o := range opts {
		data := o[1].([]byte)
		b = binary.BigEndian.AppendUint64(b, magicOpt)
		b = binary.BigEndian.AppendUint32(b, o[0].(uint32))
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	for _, r := range requests {
		b = append(b, r...)
	}
	return b
}

func requestBytes(typ uint16, flags uint16, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, 7)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func goOption(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaOption(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// FuzzConnection feeds arbitrary client bytes (negotiation and requests)
// to a connection: it must end without a panic or a hang.
func FuzzConnection(f *testing.F) {
	f.Add(clientStream([][2]any{{uint32(optStructuredReply), []byte{}},
		{uint32(optSetMetaContext), metaOption("a", metaContextAllocation)},
		{uint32(optGo), goOption("a", infoBlockSize, infoName)}},
		requestBytes(cmdWrite, cmdFlagFUA, 0, 4, []byte("abcd")),
		requestBytes(cmdRead, 0, 0, 4, nil),
		requestBytes(cmdBlockStatus, cmdFlagReqOne, 0, 4096, nil),
		requestBytes(cmdWriteZeroes, cmdFlagFastZero|cmdFlagNoHole, 0, 100, nil),
		requestBytes(cmdTrim, 0, 1<<20, 10, nil),
		requestBytes(cmdDisc, 0, 0, 0, nil)))
	f.Add(clientStream([][2]any{{uint32(optList), []byte{}}, {uint32(optExportName), []byte("a")}},
		requestBytes(cmdRead, 0, 1<<16-1, 2, nil)))
	f.Add(clientStream([][2]any{{uint32(optInfo), goOption("nope")}, {uint32(optAbort), []byte{}}}))
	f.Add([]byte{0, 0, 0, 3, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, stream []byte) {
		s := fuzzServer()
		c := newConn(s, &scriptConn{r: bytes.NewReader(stream), w: io.Discard})
		done := make(chan struct{})
		go func() {
			c.serve()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(patience):
			t.Fatal("connection did not end")
		}
	})
}

// The negotiation seeds must reach transmission: a check that the fuzz
// corpus exercises the request path at all.
func TestSeedStreamReachesTransmission(t *testing.T) {
	var out bytes.Buffer
	// Requests run concurrently (replies may come out of order), so the
	// read and the write touch different bytes.
	stream := clientStream([][2]any{{uint32(optGo), goOption("a")}},
		requestBytes(cmdWrite, 0, 10, 3, []byte("xyz")), requestBytes(cmdRead, 0, 100, 3, nil), requestBytes(cmdDisc, 0, 0, 0, nil))
	s := fuzzServer()
	backend := s.Exports()[0].Backend.(*memBackend)
	copy(backend.data[100:], "abc")
	c := newConn(s, &scriptConn{r: bytes.NewReader(stream), w: &out})
	if err := c.serve(); err != nil && err != io.EOF {
		t.Fatalf("serve: %v", err)
	}
	if !bytes.Contains(out.Bytes(), []byte("abc")) {
		t.Fatalf("the read did not return the stored bytes: % x", out.Bytes())
	}
	if string(backend.data[10:13]) != "xyz" {
		t.Fatalf("the write did not land: %q", backend.data[10:13])
	}
	if r, w := s.Stats(); r != 3 || w != 3 {
		t.Fatalf("stats: read %d, wrote %d", r, w)
	}
}
