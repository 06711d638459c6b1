package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic numbers and constants of the NBD protocol (doc/proto.md of the
// NetworkBlockDevice/nbd project). All integers are big endian.
const (
	magicInit         = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt          = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply     = 0x3e889045565a9
	magicRequest      = 0x25609513
	magicSimple       = 0x67446698
	magicStructured   = 0x668e33ef
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrTLSReqd  = 1<<31 + 5
	repErrUnknown  = 1<<31 + 6
	repErrTooBig   = 1<<31 + 9
)

// Info types.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags.
const (
	tfHasFlags        = 1 << 0
	tfReadOnly        = 1 << 1
	tfSendFlush       = 1 << 2
	tfSendFUA         = 1 << 3
	tfSendTrim        = 1 << 5
	tfSendWriteZeroes = 1 << 6
	tfSendDF          = 1 << 7
	tfCanMultiConn    = 1 << 8
	tfSendCache       = 1 << 10
	tfSendFastZero    = 1 << 11
)

// Commands and their flags.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Structured reply chunk types and flags.
const (
	chunkNone        = 0
	chunkOffsetData  = 1
	chunkBlockStatus = 5
	chunkError       = 1<<15 + 1
	chunkFlagDone    = 1
)

// Errors on the wire (Linux errno values, as the protocol defines them).
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// base:allocation status flags.
const (
	stateHole = 1
	stateZero = 2
)

const metaContextAllocation = "base:allocation"

// allocationContextID is the id the one supported meta context gets.
const allocationContextID = 1

var be = binary.BigEndian

// errProtocol marks a client that broke the protocol; the connection is
// closed.
var errProtocol = errors.New("nbd protocol error")

// option is one client option request.
type option struct {
	code uint32
	data []byte
}

// maxOptionData bounds an option's payload (names and queries are at
// most 4096 bytes each by the spec).
const maxOptionData = 64 << 10

func readOption(r io.Reader) (option, error) {
	var hdr [16]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return option{}, err
	}
	if be.Uint64(hdr[0:]) != magicOpt {
		return option{}, fmt.Errorf("%w: bad option magic %#x", errProtocol, be.Uint64(hdr[0:]))
	}
	o := option{code: be.Uint32(hdr[8:])}
	n := be.Uint32(hdr[12:])
	if n > maxOptionData {
		return o, fmt.Errorf("%w: option %d carries %d bytes", errProtocol, o.code, n)
	}
	o.data = make([]byte, n)
	if _, err := io.ReadFull(r, o.data); err != nil {
		return o, err
	}
	return o, nil
}

func writeOptionReply(w io.Writer, opt, typ uint32, data []byte) error {
	buf := make([]byte, 20+len(data))
	be.PutUint64(buf[0:], magicOptReply)
	be.PutUint32(buf[8:], opt)
	be.PutUint32(buf[12:], typ)
	be.PutUint32(buf[16:], uint32(len(data)))
	copy(buf[20:], data)
	_, err := w.Write(buf)
	return err
}

// request is one transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
	// cost is what the request holds of the in-flight budgets (set by
	// the reader, not on the wire).
	cost int64
}

const requestSize = 28

func parseRequest(hdr []byte) (request, error) {
	if be.Uint32(hdr[0:]) != magicRequest {
		return request{}, fmt.Errorf("%w: bad request magic %#x", errProtocol, be.Uint32(hdr[0:]))
	}
	return request{flags: be.Uint16(hdr[4:]), typ: be.Uint16(hdr[6:]), cookie: be.Uint64(hdr[8:]),
		offset: be.Uint64(hdr[16:]), length: be.Uint32(hdr[24:])}, nil
}

func simpleReply(cookie uint64, errno uint32, data []byte) []byte {
	buf := make([]byte, 16, 16+len(data))
	be.PutUint32(buf[0:], magicSimple)
	be.PutUint32(buf[4:], errno)
	be.PutUint64(buf[8:], cookie)
	return append(buf, data...)
}

func structuredChunk(cookie uint64, flags, typ uint16, payload []byte) []byte {
	return append(structuredChunkHeader(cookie, flags, typ, len(payload)), payload...)
}

// structuredChunkHeader is a chunk's header for a payload of n bytes.
func structuredChunkHeader(cookie uint64, flags, typ uint16, n int) []byte {
	buf := make([]byte, 20, 28)
	be.PutUint32(buf[0:], magicStructured)
	be.PutUint16(buf[4:], flags)
	be.PutUint16(buf[6:], typ)
	be.PutUint64(buf[8:], cookie)
	be.PutUint32(buf[16:], uint32(n))
	return buf
}

// lengthPrefixed reads a uint32-length-prefixed string at data[off:].
func lengthPrefixed(data []byte, off int) (string, int, error) {
	if len(data) < off+4 {
		return "", 0, fmt.Errorf("%w: truncated string", errProtocol)
	}
	n := int(be.Uint32(data[off:]))
	if n > 4096 || len(data) < off+4+n {
		return "", 0, fmt.Errorf("%w: string of %d bytes", errProtocol, n)
	}
	return string(data[off+4 : off+4+n]), off + 4 + n, nil
}
