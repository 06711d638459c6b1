package control_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
	"github.com/unionmount/unionmount/thinblock/control"
)

// served is a pool on memory devices behind a control server.
type served struct {
	meta *blockdev.Mem
	pool *thinblock.Pool
	srv  *control.Server
	sock string
}

func serve(t *testing.T, holders func(uint64) []string) *served {
	t.Helper()
	meta, data := blockdev.NewMem(), blockdev.NewMem()
	p, err := thinblock.Create(meta, data, thinblock.CreateOptions{DataSize: 1024 * thinblock.MinBlockSize}, thinblock.Options{})
	require.NoError(t, err)
	s := &served{meta: meta, pool: p, sock: filepath.Join(t.TempDir(), "control.sock")}
	s.srv = &control.Server{Pool: p, Holders: holders}
	l, err := control.Listen(s.sock)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.srv.Serve(l) }()
	t.Cleanup(func() {
		s.srv.Close()
		assert.ErrorIs(t, <-done, control.ErrClosed)
		p.Close()
	})
	return s
}

func (s *served) dial(t *testing.T) *control.Client {
	t.Helper()
	c, err := control.Dial(s.sock)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// raw sends lines as they are and returns the response lines.
func (s *served) raw(t *testing.T, lines ...string) []control.Response {
	t.Helper()
	nc, err := net.Dial("unix", s.sock)
	require.NoError(t, err)
	defer nc.Close()
	br := bufio.NewReader(nc)
	var out []control.Response
	for _, l := range lines {
		_, err := nc.Write([]byte(l + "\n"))
		require.NoError(t, err)
		line, err := br.ReadBytes('\n')
		require.NoError(t, err, "no answer to %q", l)
		var r control.Response
		require.NoError(t, json.Unmarshal(line, &r))
		out = append(out, r)
	}
	return out
}

func TestOperationsThroughTheSocket(t *testing.T) {
	s := serve(t, nil)
	c := s.dial(t)
	require.NoError(t, c.CreateVolume(1, 10<<20))
	require.NoError(t, c.Snapshot(2, 1))
	assert.ErrorIs(t, c.CreateVolume(1, 1<<20), thinblock.ErrVolumeExists)
	assert.ErrorIs(t, c.Snapshot(3, 9), thinblock.ErrNoVolume)
	assert.ErrorIs(t, c.CreateVolume(4, 0), syscall.EINVAL, "a zero size is refused")
	vols, err := c.Volumes()
	require.NoError(t, err)
	require.Len(t, vols, 2)
	assert.Equal(t, uint64(10<<20), vols[0].Size)
	assert.True(t, vols[1].Snapshot)
	// The pool itself sees what the client did.
	local, err := s.pool.Volumes()
	require.NoError(t, err)
	assert.Equal(t, local, vols)

	st, err := c.Status()
	require.NoError(t, err)
	assert.Equal(t, uint64(1024), st.DataBlocks)
	assert.Equal(t, 2, st.Volumes)
	require.NoError(t, c.Resize(2048*thinblock.MinBlockSize))
	st, err = c.Status()
	require.NoError(t, err)
	assert.Equal(t, uint64(2048), st.DataBlocks)

	require.NoError(t, c.DeleteVolumes([]uint64{1, 2}))
	vols, err = c.Volumes()
	require.NoError(t, err)
	assert.Empty(t, vols)
}

func TestRequestsAreValidatedWhole(t *testing.T) {
	s := serve(t, nil)
	require.NoError(t, s.pool.CreateVolume(1, 1<<20))
	cases := []struct{ name, line, want string }{
		{"not JSON", `create 1`, "not a JSON request"},
		{"unknown field", `{"op":"create","id":2,"size":1048576,"colour":"red"}`, "colour"},
		{"no operation", `{}`, "names no operation"},
		{"unknown operation", `{"op":"format"}`, `unknown operation "format"`},
		{"create without size", `{"op":"create","id":2}`, `create needs "size"`},
		{"create without id", `{"op":"create","size":1048576}`, `create needs "id"`},
		{"snapshot without origin", `{"op":"snapshot","id":2}`, `snapshot needs "origin"`},
		{"create with an origin", `{"op":"create","id":2,"size":1048576,"origin":1}`, `create takes no "origin"`},
		{"delete with one id field", `{"op":"delete","id":1}`, `delete needs "ids"`},
		{"delete of nothing", `{"op":"delete","ids":[]}`, "at least one id"},
		{"delete naming a volume twice", `{"op":"delete","ids":[1,1]}`, "twice"},
		{"ls with a size", `{"op":"ls","size":5}`, `ls takes no "size"`},
		{"an id above 24 bits", `{"op":"create","id":16777216,"size":1048576}`, "24-bit limit"},
		{"a snapshot id above 24 bits", `{"op":"snapshot","id":16777216,"origin":1}`, "24-bit limit"},
		{"set of nothing", `{"op":"set","id":1}`, "changes nothing"},
		{"set both ways", `{"op":"set","id":1,"read_only":true,"writable":true}`, "together"},
		{"negative id", `{"op":"create","id":-1,"size":1048576}`, "not a JSON request"},
	}
	for _, tc := range cases {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			r := s.raw(t, tc.line)[0]
			assert.Equal(t, control.CodeInvalid, r.Code)
			assert.Contains(t, r.Error, tc.want)
		})
	}
	// Nothing was changed, and the connection still answers after a
	// refusal.
	rs := s.raw(t, `{"op":"bogus"}`, `{"op":"ls"}`)
	require.Len(t, rs[1].Volumes, 1)
	assert.Equal(t, uint64(1), rs[1].Volumes[0].ID)

	t.Run("an over-long line is refused and the connection closed", func(t *testing.T) {
		nc, err := net.Dial("unix", s.sock)
		require.NoError(t, err)
		defer nc.Close()
		go nc.Write([]byte(`{"op":"ls","pad":"` + strings.Repeat("x", control.MaxRequestLine) + "\"}\n"))
		line, err := bufio.NewReader(nc).ReadBytes('\n')
		require.NoError(t, err)
		assert.Contains(t, string(line), "longer than")
	})
}

func TestDeleteOfAHeldVolumeIsRefusedNamingTheHolder(t *testing.T) {
	s := serve(t, func(id uint64) []string {
		if id == 1 {
			return []string{"NBD client pid 4242 (qemu-nbd)"}
		}
		return nil
	})
	c := s.dial(t)
	require.NoError(t, c.CreateVolume(1, 1<<20))
	require.NoError(t, c.CreateVolume(2, 1<<20))
	err := c.DeleteVolumes([]uint64{2, 1})
	require.ErrorIs(t, err, syscall.EBUSY)
	assert.Contains(t, err.Error(), "volume 1 is in use: NBD client pid 4242 (qemu-nbd)")
	vols, err := c.Volumes()
	require.NoError(t, err)
	assert.Len(t, vols, 2, "a refused delete deletes none of its volumes")
	require.NoError(t, c.DeleteVolumes([]uint64{2}))
	assert.ErrorIs(t, c.DeleteVolumes([]uint64{2}), thinblock.ErrNoVolume)
}

// Clients race creates, snapshots and deletes on the same few ids: each
// request either happens whole or fails with a reason, and the metadata
// is consistent after.
func TestClientsRacingOnTheSameVolumes(t *testing.T) {
	s := serve(t, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	unexpected := []error{}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := control.Dial(s.sock)
			if err != nil {
				mu.Lock()
				unexpected = append(unexpected, err)
				mu.Unlock()
				return
			}
			defer c.Close()
			for i := 0; i < 60; i++ {
				id, other := uint64((w+i)%4), uint64((w*3+i)%4)
				var err error
				switch i % 4 {
				case 0:
					err = c.CreateVolume(id, 4<<20)
				case 1:
					err = c.Snapshot(id, other)
				case 2:
					err = c.DeleteVolumes([]uint64{id})
				case 3:
					_, err = c.Volumes()
				}
				if err != nil && !errors.Is(err, thinblock.ErrNoVolume) && !errors.Is(err, thinblock.ErrVolumeExists) {
					mu.Lock()
					unexpected = append(unexpected, fmt.Errorf("request %d of client %d: %w", i, w, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	assert.Empty(t, unexpected)
	require.NoError(t, s.pool.Commit())
	r, err := check.Run(s.meta, nil)
	require.NoError(t, err)
	assert.True(t, r.OK(), "%v", r.Errors)
}
