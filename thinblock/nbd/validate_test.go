package nbd

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// Each class of bad request is refused with the errno the spec asks for,
// and a reason that names it; good requests pass.
func TestValidateNamesEachFailure(t *testing.T) {
	rw := Export{Name: "rw", Backend: &memBackend{data: make([]byte, 1<<20)}}
	ro := Export{Name: "ro", Backend: rw.Backend, ReadOnly: true}
	plain := &conn{export: rw, maxRequest: 1 << 16}
	structured := &conn{export: rw, maxRequest: 1 << 16, structured: true, allocation: true}
	readOnly := &conn{export: ro, maxRequest: 1 << 16}
	cases := []struct {
		name  string
		c     *conn
		req   request
		errno uint32
		why   string
	}{
		{"an unknown command", plain, request{typ: 42, length: 1}, errInval, "unknown command 42"},
		{"a READ with every flag bit set", plain, request{typ: cmdRead, flags: 0xffff, length: 1}, errInval, "READ with flags 0xfffa"},
		{"a WRITE with NO_HOLE", plain, request{typ: cmdWrite, flags: cmdFlagNoHole, length: 1}, errInval, "WRITE with flags 0x2"},
		{"a READ with REQ_ONE", plain, request{typ: cmdRead, flags: cmdFlagReqOne, length: 1}, errInval, "READ with flags 0x8"},
		{"a TRIM with FAST_ZERO", plain, request{typ: cmdTrim, flags: cmdFlagFastZero, length: 1}, errInval, "TRIM with flags 0x10"},
		{"a FLUSH with DF", plain, request{typ: cmdFlush, flags: cmdFlagDF}, errInval, "FLUSH with flags 0x4"},
		{"the extended-header PAYLOAD_LEN flag, never negotiated", plain, request{typ: cmdWrite, flags: 1 << 5, length: 1}, errInval, "WRITE with flags 0x20"},
		{"DF without structured replies", plain, request{typ: cmdRead, flags: cmdFlagDF, length: 1}, errInval, "DF before structured replies"},
		{"BLOCK_STATUS without base:allocation", plain, request{typ: cmdBlockStatus, length: 1}, errInval, "base:allocation"},
		{"a WRITE to a read-only export", readOnly, request{typ: cmdWrite, length: 1}, errPerm, "read-only export"},
		{"a TRIM of a read-only export", readOnly, request{typ: cmdTrim, length: 1}, errPerm, "read-only export"},
		{"a FLUSH with an offset", plain, request{typ: cmdFlush, offset: 4096}, errInval, "FLUSH with offset 4096"},
		{"a READ of length 0", plain, request{typ: cmdRead}, errInval, "length 0"},
		{"a READ above the maximum", plain, request{typ: cmdRead, length: 1<<16 + 1}, errInval, "limit 65536"},
		{"a READ past the end", plain, request{typ: cmdRead, offset: 1 << 20, length: 1}, errInval, "past the end"},
		{"a WRITE past the end", plain, request{typ: cmdWrite, offset: 1<<20 - 1, length: 2}, errNoSpc, "past the end"},
		{"an offset and length that wrap", plain, request{typ: cmdRead, offset: ^uint64(0) - 1, length: 4}, errInval, "past the end"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.c.validate(tc.req)
			if assert.NotNil(t, r) {
				assert.Equal(t, tc.errno, r.errno)
				assert.Contains(t, r.why, tc.why)
			}
		})
	}
	for name, ok := range map[string]struct {
		c   *conn
		req request
	}{
		"FUA on a READ (valid on every command)": {plain, request{typ: cmdRead, flags: cmdFlagFUA, length: 1}},
		"DF on a READ with structured replies":   {structured, request{typ: cmdRead, flags: cmdFlagDF, length: 1}},
		"a WRITE_ZEROES with NO_HOLE and FUA":    {plain, request{typ: cmdWriteZeroes, flags: cmdFlagNoHole | cmdFlagFUA, length: 1}},
		"BLOCK_STATUS with REQ_ONE":              {structured, request{typ: cmdBlockStatus, flags: cmdFlagReqOne, length: 1}},
		"a READ of a read-only export":           {readOnly, request{typ: cmdRead, offset: 1<<20 - 1, length: 1}},
		"a FLUSH":                                {plain, request{typ: cmdFlush}},
	} {
		assert.Nil(t, ok.c.validate(ok.req), name)
	}
}
