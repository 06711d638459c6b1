// Package control is the control channel of a served pool: a unix socket
// beside the pool over which the thinblock commands ask the running
// server to create, snapshot, delete, list and resize volumes and to
// report the pool's status, since the server holds the pool's lock.
//
// The protocol is JSON lines: a client writes one Request per line and
// reads one Response per line, in order, on one connection. protocol.go
// holds the wire types, server.go the server (each request is checked
// whole by validate, then handed to dispatch, which assumes it valid),
// client.go the client. The package knows the pool's operations but
// nothing of how the pool is exported: who holds a volume open and what
// to do when the volume list changes are the server's hooks.
package control

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/unionmount/unionmount/thinblock"
)

// Operations.
const (
	OpCreate   = "create"
	OpSnapshot = "snapshot"
	OpDelete   = "delete"
	OpList     = "ls"
	OpStatus   = "status"
	OpResize   = "resize"
	OpTrim     = "trim"
	OpSet      = "set"
)

// Request is one line a client sends. Which fields an operation takes:
//
//	create   id, size; name, read_only optional
//	snapshot id, origin; name, read_only optional
//	delete   ids (one or more)
//	ls       -
//	status   -
//	resize   size (data bytes)
//	trim     -  (punch every unused data block; answers trimmed)
//	set      id; name, read_only or writable (what is not given stays)
type Request struct {
	Op     string   `json:"op"`
	ID     *uint64  `json:"id,omitempty"`
	Origin *uint64  `json:"origin,omitempty"`
	IDs    []uint64 `json:"ids,omitempty"`
	Size   uint64   `json:"size,omitempty"`
	// create and snapshot: the new volume's attributes.
	Name     string `json:"name,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// set: make the volume writable.
	Writable bool `json:"writable,omitempty"`
}

// Response is the line that answers a Request: Error is empty on
// success, and Code then classifies it (see the Code constants).
type Response struct {
	Error   string   `json:"error,omitempty"`
	Code    string   `json:"code,omitempty"`
	Volumes []Volume `json:"volumes,omitempty"`
	Status  *Status  `json:"status,omitempty"`
	// Trimmed is the number of data blocks a trim punched.
	Trimmed uint64 `json:"trimmed,omitempty"`
}

// Error codes, so a client can give the same exit status as a local
// command.
const (
	CodeInvalid  = "invalid"   // a bad request: EINVAL
	CodeNoVolume = "no-volume" // thinblock.ErrNoVolume
	CodeExists   = "exists"    // thinblock.ErrVolumeExists
	CodeBusy     = "busy"      // the volume is held open: EBUSY
	CodeNoSpace  = "no-space"  // ENOSPC
	CodeDenied   = "denied"    // the peer may not use the pool: EACCES
	CodeFailed   = "failed"    // anything else
)

// Volume is a volume as listed on the wire and by `ls --json`.
type Volume struct {
	ID           uint64 `json:"id"`
	Size         uint64 `json:"size"`
	Mapped       uint64 `json:"mapped_blocks"`
	Exclusive    uint64 `json:"exclusive_blocks"`
	Shared       uint64 `json:"shared_blocks"`
	CreationTime uint32 `json:"creation_time"`
	SnapTime     uint32 `json:"snap_time"`
	Snapshot     bool   `json:"snapshot"`
	// Attributes: absent for a volume made before they existed.
	Name     string  `json:"name,omitempty"`
	ReadOnly bool    `json:"read_only"`
	Origin   *uint64 `json:"origin,omitempty"`
	HasAttrs bool    `json:"has_attributes"`
}

// Status is the pool's status as sent on the wire and by
// `pool status --json`.
type Status struct {
	TransactionID  uint64 `json:"transaction_id"`
	BlockSize      uint64 `json:"block_size"`
	DataBlocks     uint64 `json:"data_blocks"`
	FreeBlocks     uint64 `json:"free_blocks"`
	LowWater       uint64 `json:"low_water_blocks"`
	LowSpace       bool   `json:"low_space"`
	OutOfSpace     bool   `json:"out_of_space"`
	MetadataBlocks uint64 `json:"metadata_blocks"`
	MetadataUsed   uint64 `json:"metadata_used_blocks"`
	Volumes        int    `json:"volumes"`
	Failed         string `json:"failed,omitempty"`
}

// FromVolumeInfo converts the pool's description of a volume.
func FromVolumeInfo(v thinblock.VolumeInfo) Volume {
	w := Volume{ID: v.ID, Size: v.Size, Mapped: v.Mapped, Exclusive: v.Exclusive, Shared: v.Shared,
		CreationTime: v.CreationTime, SnapTime: v.SnapTime, Snapshot: v.Snapshot,
		Name: v.Name, ReadOnly: v.ReadOnly, HasAttrs: v.HasAttrs}
	if v.HasOrigin {
		o := v.Origin
		w.Origin = &o
	}
	return w
}

// VolumeInfo converts back to the pool's type.
func (v Volume) VolumeInfo() thinblock.VolumeInfo {
	i := thinblock.VolumeInfo{VolumeBrief: thinblock.VolumeBrief{ID: v.ID, Size: v.Size, Mapped: v.Mapped,
		CreationTime: v.CreationTime, SnapTime: v.SnapTime, Snapshot: v.Snapshot,
		HasAttrs: v.HasAttrs, Name: v.Name, ReadOnly: v.ReadOnly}, Exclusive: v.Exclusive, Shared: v.Shared}
	if v.Origin != nil {
		i.HasOrigin, i.Origin = true, *v.Origin
	}
	return i
}

// FromStatus converts the pool's status.
func FromStatus(s thinblock.Status) Status {
	return Status(s)
}

// PoolStatus converts back to the pool's type.
func (s Status) PoolStatus() thinblock.Status { return thinblock.Status(s) }

// codeOf classifies an error for the wire.
func codeOf(err error) string {
	switch {
	case errors.Is(err, thinblock.ErrNoVolume):
		return CodeNoVolume
	case errors.Is(err, thinblock.ErrVolumeExists):
		return CodeExists
	case errors.Is(err, syscall.EBUSY):
		return CodeBusy
	case errors.Is(err, syscall.ENOSPC):
		return CodeNoSpace
	case errors.Is(err, syscall.EACCES):
		return CodeDenied
	case errors.Is(err, syscall.EINVAL):
		return CodeInvalid
	}
	return CodeFailed
}

// remoteError is an error the server reported, wrapping what its code
// stands for so errors.Is works on the client as on the server.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func errorOf(r Response) error {
	if r.Error == "" {
		return nil
	}
	var kind error
	switch r.Code {
	case CodeInvalid:
		kind = syscall.EINVAL
	case CodeNoVolume:
		kind = thinblock.ErrNoVolume
	case CodeExists:
		kind = thinblock.ErrVolumeExists
	case CodeBusy:
		kind = syscall.EBUSY
	case CodeNoSpace:
		kind = syscall.ENOSPC
	case CodeDenied:
		kind = syscall.EACCES
	}
	return &remoteError{msg: r.Error, kind: kind}
}

// invalid makes a validation failure.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), syscall.EINVAL)
}
