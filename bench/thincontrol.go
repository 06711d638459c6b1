package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// thinControl speaks a served pool's control protocol (JSON lines on
// DIR/control.sock, docs/thinblock.md) from the outside, as QMP is
// spoken to qemu-storage-daemon, so that both peers' requests are timed
// on an open connection and without a process start. It is not safe for
// concurrent use.
type thinControl struct {
	conn    net.Conn
	lines   *bufio.Reader
	timeout time.Duration
}

// thinRequest is the part of the control protocol's request the rows use.
type thinRequest struct {
	Op     string   `json:"op"`
	ID     *uint64  `json:"id,omitempty"`
	Origin *uint64  `json:"origin,omitempty"`
	IDs    []uint64 `json:"ids,omitempty"`
	Size   uint64   `json:"size,omitempty"`
}

// errThinBusy is the server's "busy" answer: the volume is held open.
var errThinBusy = errors.New("volume busy")

func dialThinControl(path string) (*thinControl, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("thinblock control: %w", err)
	}
	return &thinControl{conn: conn, lines: bufio.NewReader(conn), timeout: 30 * time.Second}, nil
}

func (c *thinControl) call(r thinRequest) error {
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	defer c.conn.SetDeadline(time.Time{})
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := c.conn.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("thinblock control %s: %w", r.Op, err)
	}
	line, err := c.lines.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("thinblock control %s: %w", r.Op, err)
	}
	var resp struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("thinblock control %s: its answer: %w", r.Op, err)
	}
	switch {
	case resp.Error == "":
		return nil
	case resp.Code == "busy":
		return fmt.Errorf("thinblock control %s: %s: %w", r.Op, resp.Error, errThinBusy)
	}
	return fmt.Errorf("thinblock control %s: %s (%s)", r.Op, resp.Error, resp.Code)
}

func (c *thinControl) create(id, size uint64) error {
	return c.call(thinRequest{Op: "create", ID: &id, Size: size})
}

func (c *thinControl) snapshot(id, origin uint64) error {
	return c.call(thinRequest{Op: "snapshot", ID: &id, Origin: &origin})
}

func (c *thinControl) delete(ids ...uint64) error {
	return c.call(thinRequest{Op: "delete", IDs: ids})
}

func (c *thinControl) close() error { return c.conn.Close() }
