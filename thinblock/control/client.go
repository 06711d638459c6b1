package control

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/unionmount/unionmount/thinblock"
)

// Client talks to a pool's control server. Its methods mirror the
// pool's, so a command runs the same code on a pool it opened and on a
// served one. Calls on one Client are serialized.
type Client struct {
	mu sync.Mutex
	nc net.Conn
	br *bufio.Reader
}

// Dial connects to the control socket at path; it fails at once when no
// server listens there.
func Dial(path string) (*Client, error) {
	nc, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &Client{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.nc.Close() }

// Call sends one request and returns its response; a response carrying
// an error is returned as that error.
func (c *Client) Call(r Request) (Response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := json.Marshal(r)
	if err != nil {
		return Response{}, err
	}
	if _, err := c.nc.Write(append(b, '\n')); err != nil {
		return Response{}, fmt.Errorf("control: send: %w", err)
	}
	line, err := c.br.ReadBytes('\n')
	if err != nil {
		return Response{}, fmt.Errorf("control: the server closed the connection without answering: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return Response{}, fmt.Errorf("control: bad response: %w", err)
	}
	return resp, errorOf(resp)
}

// CreateVolume asks for a new empty volume.
func (c *Client) CreateVolume(id, size uint64) error {
	return c.CreateVolumeWith(id, size, thinblock.Attrs{})
}

// CreateVolumeWith asks for a new empty volume with attributes.
func (c *Client) CreateVolumeWith(id, size uint64, a thinblock.Attrs) error {
	_, err := c.Call(Request{Op: OpCreate, ID: &id, Size: size, Name: a.Name, ReadOnly: a.ReadOnly})
	return err
}

// Snapshot asks for a snapshot of origin.
func (c *Client) Snapshot(id, origin uint64) error {
	return c.SnapshotWith(id, origin, thinblock.Attrs{})
}

// SnapshotWith asks for a snapshot of origin with attributes.
func (c *Client) SnapshotWith(id, origin uint64, a thinblock.Attrs) error {
	_, err := c.Call(Request{Op: OpSnapshot, ID: &id, Origin: &origin, Name: a.Name, ReadOnly: a.ReadOnly})
	return err
}

// DeleteVolumes deletes all of ids, or none.
func (c *Client) DeleteVolumes(ids []uint64) error {
	_, err := c.Call(Request{Op: OpDelete, IDs: ids})
	return err
}

// Volumes lists the volumes.
func (c *Client) Volumes() ([]thinblock.VolumeInfo, error) {
	r, err := c.Call(Request{Op: OpList})
	if err != nil {
		return nil, err
	}
	out := make([]thinblock.VolumeInfo, len(r.Volumes))
	for i, v := range r.Volumes {
		out[i] = v.VolumeInfo()
	}
	return out, nil
}

// Status reports the pool's status.
func (c *Client) Status() (thinblock.Status, error) {
	r, err := c.Call(Request{Op: OpStatus})
	if err != nil {
		return thinblock.Status{}, err
	}
	if r.Status == nil {
		return thinblock.Status{}, fmt.Errorf("control: status response without a status")
	}
	return r.Status.PoolStatus(), nil
}

// Resize grows (or shrinks) the pool's data.
func (c *Client) Resize(size uint64) error {
	_, err := c.Call(Request{Op: OpResize, Size: size})
	return err
}

// Trim punches every unused data block; it returns how many.
func (c *Client) Trim() (uint64, error) {
	r, err := c.Call(Request{Op: OpTrim})
	return r.Trimmed, err
}

// SetAttrs changes a volume's attributes.
func (c *Client) SetAttrs(id uint64, ch thinblock.AttrChange) error {
	r := Request{Op: OpSet, ID: &id}
	if ch.Name != nil {
		r.Name = *ch.Name
	}
	if ch.ReadOnly != nil {
		r.ReadOnly, r.Writable = *ch.ReadOnly, !*ch.ReadOnly
	}
	_, err := c.Call(r)
	return err
}
