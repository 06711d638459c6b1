package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock/control"
)

// nbdWrite sends one NBD write on an export connection and waits for its
// reply (for goroutines, which must not call require).
func nbdWrite(conn net.Conn, cookie, off uint64, data []byte) error {
	be := binary.BigEndian
	req := be.AppendUint32(nil, 0x25609513)
	req = be.AppendUint16(req, 0)
	req = be.AppendUint16(req, 1) // WRITE
	req = be.AppendUint64(req, cookie)
	req = be.AppendUint64(req, off)
	req = be.AppendUint32(req, uint32(len(data)))
	if _, err := conn.Write(append(req, data...)); err != nil {
		return err
	}
	reply := make([]byte, 16)
	conn.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadFull(conn, reply); err != nil {
		return err
	}
	if errno := be.Uint32(reply[4:]); errno != 0 {
		return fmt.Errorf("write at %d: NBD error %d", off, errno)
	}
	return nil
}

// seqPattern fills n bytes with seq, as little-endian uint32s.
func seqPattern(seq uint32, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4 {
		binary.LittleEndian.PutUint32(b[i:], seq)
	}
	return b
}

// uniformSeq returns the seq a region holds, or an error when it is torn
// (holds pieces of different writes).
func uniformSeq(b []byte) (uint32, error) {
	first := binary.LittleEndian.Uint32(b)
	for i := 4; i < len(b); i += 4 {
		if v := binary.LittleEndian.Uint32(b[i:]); v != first {
			return 0, fmt.Errorf("torn: seq %d at byte 0, seq %d at byte %d", first, v, i)
		}
	}
	return first, nil
}

// Snapshots of a volume being written through NBD, taken with the
// snapshot command while writes run: each snapshot holds every write
// acknowledged before the command, none issued after it returned, and no
// torn write. Eight writers each rewrite a 48 KiB region that straddles
// two 64 KiB blocks it shares with its neighbours, so copy-on-write after
// each snapshot races writes to the other pieces of the same blocks.
func TestSnapshotsOfAVolumeBeingWritten(t *testing.T) {
	const (
		writers = 8
		region  = 48 << 10
		rounds  = 200
	)
	s, dir := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "1M"})
	var acked, issued [writers]atomic.Uint32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		c := dialExport(t, s.sock, "1")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint32(1); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				issued[w].Store(seq)
				if err := nbdWrite(c.conn, uint64(seq), uint64(w*region), seqPattern(seq, region)); err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				acked[w].Store(seq)
			}
		}()
	}
	type bounds struct{ lo, hi [writers]uint32 }
	var snaps []bounds
	// The first snapshots through the command, as people take them; the
	// rest back to back through the control socket, so many land while
	// a write is between filling a new block and mapping it.
	var took []time.Duration // each snapshot request, for the log
	ctl, err := control.Dial(filepath.Join(dir, "control.sock"))
	require.NoError(t, err)
	defer ctl.Close()
	for i := 0; i < rounds; i++ {
		var b bounds
		for w := range b.lo {
			b.lo[w] = acked[w].Load()
		}
		if i < 10 {
			mustRun(t, "snapshot", "--pool", dir, fmt.Sprint(100+i), "1")
		} else {
			start := time.Now()
			require.NoError(t, ctl.Snapshot(uint64(100+i), 1))
			took = append(took, time.Since(start))
		}
		for w := range b.hi {
			b.hi[w] = issued[w].Load()
		}
		snaps = append(snaps, b)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var final [writers]uint32
	for w := range final {
		final[w] = acked[w].Load()
	}
	check := func(export string, want func(w int, v uint32) error) {
		c := dialExport(t, s.sock, export)
		require.Zero(t, c.request(t, 0, 1, 0, writers*region, nil), "read export %s", export)
		for w := 0; w < writers; w++ {
			v, err := uniformSeq(c.lastData[w*region : (w+1)*region])
			if err == nil {
				err = want(w, v)
			}
			assert.NoError(t, err, "export %s, writer %d's region", export, w)
		}
	}
	for i, b := range snaps {
		check(fmt.Sprint(100+i), func(w int, v uint32) error {
			if v < b.lo[w] || v > b.hi[w] {
				return fmt.Errorf("holds write %d; acknowledged before the snapshot: %d, issued before it returned: %d", v, b.lo[w], b.hi[w])
			}
			return nil
		})
	}
	check("1", func(w int, v uint32) error {
		if v != final[w] {
			return fmt.Errorf("the origin holds write %d, the last acknowledged is %d", v, final[w])
		}
		return nil
	})
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("writes per writer: %v; snapshot request under load: median %v, p90 %v, max %v", final,
		took[len(took)/2], took[len(took)*9/10], took[len(took)-1])
	s.stop(t)
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
}
