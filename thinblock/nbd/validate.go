package nbd

import "fmt"

// rejection is why a request is refused: the errno the client gets and
// a line for the log.
type rejection struct {
	errno uint32
	why   string
}

func reject(errno uint32, format string, args ...any) *rejection {
	return &rejection{errno: errno, why: fmt.Sprintf(format, args...)}
}

// commandNames names the commands in log lines.
var commandNames = map[uint16]string{
	cmdRead: "READ", cmdWrite: "WRITE", cmdDisc: "DISC", cmdFlush: "FLUSH", cmdTrim: "TRIM",
	cmdCache: "CACHE", cmdWriteZeroes: "WRITE_ZEROES", cmdBlockStatus: "BLOCK_STATUS",
}

func commandName(typ uint16) string {
	if n, ok := commandNames[typ]; ok {
		return n
	}
	return fmt.Sprintf("command %d", typ)
}

// flagsFor lists the command flags each command may carry (doc/proto.md,
// "Request types"). FUA is valid on every command once SEND_FUA is
// negotiated, which this server always advertises; a server must accept
// it even where it means nothing.
var flagsFor = map[uint16]uint16{
	cmdRead:        cmdFlagFUA | cmdFlagDF,
	cmdWrite:       cmdFlagFUA,
	cmdFlush:       cmdFlagFUA,
	cmdTrim:        cmdFlagFUA,
	cmdCache:       cmdFlagFUA,
	cmdWriteZeroes: cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero,
	cmdBlockStatus: cmdFlagFUA | cmdFlagReqOne,
}

// validate checks a whole request against the command, what was
// negotiated and the export, and names the first thing wrong with it.
// Dispatch (conn.handle) then assumes a valid request. DISC never gets
// here: the reader ends the connection on it.
func (c *conn) validate(req request) *rejection {
	name := commandName(req.typ)
	allowed, known := flagsFor[req.typ]
	if !known {
		return reject(errInval, "unknown %s", name)
	}
	if bad := req.flags &^ allowed; bad != 0 {
		return reject(errInval, "%s with flags %#x it does not take", name, bad)
	}
	if req.flags&cmdFlagDF != 0 && !c.structured {
		return reject(errInval, "READ with DF before structured replies were negotiated")
	}
	e := c.export
	switch req.typ {
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if e.ReadOnly {
			return reject(errPerm, "%s on read-only export %q", name, e.Name)
		}
	case cmdBlockStatus:
		if !c.allocation {
			return reject(errInval, "BLOCK_STATUS without the base:allocation context negotiated")
		}
	}
	if req.typ == cmdFlush {
		if req.offset != 0 || req.length != 0 {
			return reject(errInval, "FLUSH with offset %d and length %d (both must be 0)", req.offset, req.length)
		}
		return nil
	}
	if req.length == 0 {
		return reject(errInval, "%s of length 0", name)
	}
	if req.typ == cmdRead && req.length > c.maxRequest {
		return reject(errInval, "READ of %d bytes (limit %d)", req.length, c.maxRequest)
	}
	size := e.Backend.Size()
	end := req.offset + uint64(req.length)
	if end < req.offset || end > size {
		errno := uint32(errInval)
		if req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes {
			// The spec's answer to a write past the end.
			errno = errNoSpc
		}
		return reject(errno, "%s of %d bytes at %d past the end of export %q (%d bytes)", name, req.length, req.offset, e.Name, size)
	}
	return nil
}
