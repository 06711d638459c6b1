package bench

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpClient speaks QEMU's monitor protocol (QMP) on a unix socket, as a
// management tool drives a running qemu-storage-daemon: one command at a
// time, each answered by a "return" or an "error", with asynchronous
// events interleaved (and dropped here). It is not safe for concurrent
// use: the live-pool rows give it one caller.
type qmpClient struct {
	conn net.Conn
	dec  *json.Decoder
	enc  *json.Encoder
	// timeout bounds each command, so a stuck daemon fails the row
	// rather than hanging the run.
	timeout time.Duration
}

// qmpError is an error QEMU answered with: its class (GenericError,
// DeviceNotFound...) and its description.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// qmpMessage is anything the server sends: the greeting, a command's
// answer, or an event.
type qmpMessage struct {
	Greeting json.RawMessage `json:"QMP"`
	Return   json.RawMessage `json:"return"`
	Error    *qmpError       `json:"error"`
	Event    string          `json:"event"`
}

// dialQMP connects to a QMP socket, reads the greeting and leaves
// capabilities negotiation mode, after which commands are accepted.
func dialQMP(path string) (*qmpClient, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	c := &qmpClient{conn: conn, dec: json.NewDecoder(conn), enc: json.NewEncoder(conn), timeout: 30 * time.Second}
	conn.SetReadDeadline(time.Now().Add(c.timeout))
	var greeting qmpMessage
	if err := c.dec.Decode(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: reading the greeting: %w", path, err)
	}
	if greeting.Greeting == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: no greeting, is it a QMP socket?", path)
	}
	if err := c.execute("qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// execute runs one command; args (if not nil) are its arguments, and
// reply (if not nil) receives what it returned. A refusal is a *qmpError.
func (c *qmpClient) execute(command string, args, reply any) error {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{command, args}
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	defer c.conn.SetDeadline(time.Time{})
	if err := c.enc.Encode(req); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		var m qmpMessage
		if err := c.dec.Decode(&m); err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return m.Error
		case m.Return != nil:
			if reply == nil {
				return nil
			}
			if err := json.Unmarshal(m.Return, reply); err != nil {
				return fmt.Errorf("qmp %s: its answer: %w", command, err)
			}
			return nil
		default:
			return fmt.Errorf("qmp %s: an answer with neither return nor error", command)
		}
	}
}

func (c *qmpClient) close() error { return c.conn.Close() }

// snapshotSync takes an external snapshot of a running node: QEMU
// creates file (a qcow2 over the node's image), opens it as node
// newNode and makes it the active layer, so the node's users (here the
// NBD export) write to it from then on. The node is drained first, so
// the snapshot holds every write completed before it.
func (c *qmpClient) snapshotSync(node, file, newNode string) error {
	return c.execute("blockdev-snapshot-sync", map[string]string{
		"node-name": node, "snapshot-file": file, "snapshot-node-name": newNode, "format": "qcow2",
	}, nil)
}

// qmpExport is an entry of query-block-exports.
type qmpExport struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	NodeName string `json:"node-name"`
}

func (c *qmpClient) exports() ([]qmpExport, error) {
	var out []qmpExport
	err := c.execute("query-block-exports", nil, &out)
	return out, err
}
