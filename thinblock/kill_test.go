package thinblock_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
)

const (
	killVolumeBlocks = 32
	killWriteSize    = 4096
	killSlots        = killVolumeBlocks * testBlock / killWriteSize
	killEnv          = "THINBLOCK_KILL_CHILD"
	// killWriters write at once, each to its own 4 KiB slots (slot %
	// killWriters), so they write distinct pieces of the same blocks.
	killWriters = 4
	// killSpan bounds the writes of one writer in one child, so each
	// child's sequence numbers have a range of their own.
	killSpan = 1 << 20
	// killSnapshots is how many snapshots a child keeps: it deletes the
	// oldest beyond that.
	killSnapshots = 2
)

// killSeq is the sequence number of writer w's k-th write in a child
// whose numbers start after base.
func killSeq(base uint64, w, k int) uint64 {
	return base + 1 + uint64(k)*killWriters + uint64(w)
}

// killSlotRNG is writer w's slot sequence in a child started with seed.
func killSlotRNG(seed int64, w int) *rand.Rand {
	return rand.New(rand.NewSource(seed*31 + int64(w)))
}

// killSlot is the offset of writer w's next write.
func killSlot(rng *rand.Rand, w int) int64 {
	return int64(w+killWriters*rng.Intn(killSlots/killWriters)) * killWriteSize
}

func stamp(seq uint64) []byte {
	b := make([]byte, killWriteSize)
	for i := 0; i < killWriteSize; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], seq)
	}
	return b
}

func openFilePool(dir string, create bool) (*thinblock.Pool, error) {
	meta, err := blockdev.OpenFile(filepath.Join(dir, "meta"), create)
	if err != nil {
		return nil, err
	}
	data, err := blockdev.OpenFile(filepath.Join(dir, "data"), create)
	if err != nil {
		return nil, err
	}
	if create {
		return thinblock.Create(meta, data, thinblock.CreateOptions{DataSize: 8 * killVolumeBlocks * testBlock},
			thinblock.Options{CommitInterval: 50 * time.Millisecond})
	}
	return thinblock.Open(meta, data, thinblock.Options{CommitInterval: 50 * time.Millisecond})
}

func killChildFail(err error) {
	fmt.Println("error", err)
	os.Exit(3)
}

// TestKillChildHelper is the child of TestSIGKILLKeepsFlushedWrites:
// killWriters goroutines write the seeded sequences to volume 1 forever,
// while the main goroutine flushes now and then, and now and then takes
// a snapshot of volume 1 between writes, deleting the oldest; it says
// which writes each flush covered and what each committed snapshot holds.
func TestKillChildHelper(t *testing.T) {
	arg := os.Getenv(killEnv)
	if arg == "" {
		t.Skip("runs only as the child of TestSIGKILLKeepsFlushedWrites")
	}
	dir, seedText, _ := strings.Cut(arg, ":")
	seed, _ := strconv.ParseInt(seedText, 10, 64)
	base, _ := strconv.ParseUint(os.Getenv(killEnv+"_START"), 10, 64)
	p, err := openFilePool(dir, false)
	if err != nil {
		killChildFail(err)
	}
	v, err := p.Volume(1)
	if err != nil {
		killChildFail(err)
	}
	vols, err := p.Volumes()
	if err != nil {
		killChildFail(err)
	}
	var snaps []uint64
	for _, vi := range vols {
		if vi.ID != 1 {
			snaps = append(snaps, vi.ID)
		}
	}
	nextSnap := vols[len(vols)-1].ID + 1
	for len(snaps) > killSnapshots { // some a killed child took unreported
		fmt.Println("deleting", snaps[0])
		if err := p.DeleteVolume(snaps[0]); err != nil {
			killChildFail(err)
		}
		snaps = snaps[1:]
	}
	// The parent times its kill from here, not from the process start,
	// which a loaded machine delays.
	fmt.Println("opened")
	// Writers hold gate shared across a write and its count, so a
	// snapshot taken holding it exclusively knows every write before it.
	var gate sync.RWMutex
	var counts [killWriters]atomic.Int64
	for w := 0; w < killWriters; w++ {
		go func(w int) {
			rng := killSlotRNG(seed, w)
			for k := 0; k < killSpan; k++ {
				gate.RLock()
				if _, err := v.WriteAt(stamp(killSeq(base, w, k)), killSlot(rng, w)); err != nil {
					killChildFail(err)
				}
				counts[w].Store(int64(k + 1))
				gate.RUnlock()
			}
			killChildFail(fmt.Errorf("writer %d wrote %d times", w, killSpan))
		}(w)
	}
	load := func() string {
		var c []string
		for w := range counts {
			c = append(c, strconv.FormatInt(counts[w].Load(), 10))
		}
		return strings.Join(c, " ")
	}
	rng := rand.New(rand.NewSource(seed))
	for {
		time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
		if rng.Intn(4) != 0 {
			c := load()
			if err := p.Commit(); err != nil {
				killChildFail(err)
			}
			fmt.Println("flushed", c)
			continue
		}
		gate.Lock()
		c := load()
		err := p.Snapshot(nextSnap, 1)
		gate.Unlock()
		if err != nil {
			killChildFail(err)
		}
		if err := p.Commit(); err != nil {
			killChildFail(err)
		}
		fmt.Println("snapshot", nextSnap, c)
		snaps = append(snaps, nextSnap)
		nextSnap++
		if len(snaps) > killSnapshots {
			fmt.Println("deleting", snaps[0])
			if err := p.DeleteVolume(snaps[0]); err != nil {
				killChildFail(err)
			}
			snaps = snaps[1:]
		}
	}
}

// killChild is what the parent knows of one child: where its sequence
// numbers start, its seed, and each writer's slots as far as replayed.
type killChild struct {
	base  uint64
	seed  int64
	rngs  [killWriters]*rand.Rand
	slots [killWriters][]int64
}

func newKillChild(base uint64, seed int64) *killChild {
	c := &killChild{base: base, seed: seed}
	for w := range c.rngs {
		c.rngs[w] = killSlotRNG(seed, w)
	}
	return c
}

// slot is the offset of writer w's k-th write.
func (c *killChild) slot(w, k int) int64 {
	for len(c.slots[w]) <= k {
		c.slots[w] = append(c.slots[w], killSlot(c.rngs[w], w))
	}
	return c.slots[w][k]
}

// apply lays the first counts[w] writes of each writer over state.
func (c *killChild) apply(state map[int64]uint64, counts []int) map[int64]uint64 {
	out := make(map[int64]uint64, len(state))
	for s, q := range state {
		out[s] = q
	}
	for w, n := range counts {
		for k := 0; k < n; k++ {
			out[c.slot(w, k)] = killSeq(c.base, w, k)
		}
	}
	return out
}

// parseCounts reads the per-writer counts of a child's line.
func parseCounts(t *testing.T, fields []string) []int {
	require.Len(t, fields, killWriters, "counts %v", fields)
	out := make([]int, killWriters)
	for w, f := range fields {
		n, err := strconv.Atoi(f)
		require.NoError(t, err)
		out[w] = n
	}
	return out
}

// TestSIGKILLKeepsFlushedWrites kills a process that writes from several
// goroutines to pieces of shared blocks and takes snapshots, at random
// moments; after each restart the pool must check clean, every write
// acknowledged before a flush must still be there, and every committed
// snapshot must hold exactly what volume 1 held when it was taken.
func TestSIGKILLKeepsFlushedWrites(t *testing.T) {
	rounds := 30
	if os.Getenv("UNIONMOUNT_LONG") != "" {
		rounds = 300
	}
	dir := t.TempDir()
	p, err := openFilePool(dir, true)
	require.NoError(t, err)
	require.NoError(t, p.CreateVolume(1, killVolumeBlocks*testBlock))
	require.NoError(t, p.Close())

	// state is what volume 1 holds when a child starts (the seq in each
	// slot); snaps what each committed snapshot must hold.
	state := map[int64]uint64{}
	snaps := map[uint64]map[int64]uint64{}
	var children []*killChild
	var base uint64
	ackedRounds, snapRounds := 0, 0
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < rounds; round++ {
		child := newKillChild(base, rng.Int63())
		children = append(children, child)
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChildHelper$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:%d", killEnv, dir, child.seed), fmt.Sprintf("%s_START=%d", killEnv, base))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		var flushed []int
		tookSnap := false
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		handle := func(l string) {
			f := strings.Fields(l)
			switch {
			case len(f) == 0:
			case f[0] == "error":
				t.Fatalf("round %d: child: %s", round, l)
			case f[0] == "flushed":
				flushed = parseCounts(t, f[1:])
			case f[0] == "snapshot":
				id, err := strconv.ParseUint(f[1], 10, 64)
				require.NoError(t, err)
				counts := parseCounts(t, f[2:])
				snaps[id] = child.apply(state, counts)
				// The commit after the snapshot flushed these writes too.
				flushed = counts
				tookSnap = true
			case f[0] == "deleting":
				id, err := strconv.ParseUint(f[1], 10, 64)
				require.NoError(t, err)
				delete(snaps, id) // it may or may not be gone
			}
		}
		killAfter := time.Duration(10+rng.Intn(90)) * time.Millisecond
		// The kill clock starts when the child has opened the pool; in
		// every other round only once it has committed a snapshot, so
		// that a loaded machine, where a child does less in its random
		// lifetime, still kills children right after snapshots (up to
		// 60 s for either: a child that started, on a loaded machine,
		// long after the parent asked is still waited for).
		armOn := "opened"
		if round%2 == 1 {
			armOn = "snapshot"
		}
		armed := false
		deadline := time.After(60 * time.Second)
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break wait
				}
				if !armed && (l == armOn || strings.HasPrefix(l, armOn+" ")) {
					armed = true
					deadline = time.After(killAfter)
				}
				handle(l)
			case <-deadline:
				break wait
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for l := range lines {
			handle(l)
		}
		cmd.Wait()
		if flushed != nil {
			ackedRounds++
		}
		if tookSnap {
			snapRounds++
		}
		expect := state
		if flushed != nil {
			expect = child.apply(state, flushed)
		}
		state = verifyKilled(t, dir, children, expect, snaps, round)
		// The next child starts after every seq this one could have used.
		base += killWriters * killSpan
	}
	// Every other child is killed only after a snapshot's commit, so at
	// least half flushed and took a snapshot unless children stopped
	// making progress.
	require.GreaterOrEqual(t, ackedRounds, rounds/2, "children lived long enough to flush")
	require.GreaterOrEqual(t, snapRounds, rounds/2, "children took snapshots")
	t.Logf("%d rounds, %d with flushed writes, %d with snapshots, %d snapshots checked at the end",
		rounds, ackedRounds, snapRounds, len(snaps))
}

// verifyKilled checks the pool after a kill and returns what volume 1
// holds now: each slot holds the last flushed write to it or a later
// one, whole; each committed snapshot holds exactly what it must.
func verifyKilled(t *testing.T, dir string, children []*killChild, expect map[int64]uint64,
	snaps map[uint64]map[int64]uint64, round int) map[int64]uint64 {
	meta, err := blockdev.OpenFile(filepath.Join(dir, "meta"), false)
	require.NoError(t, err)
	r, err := check.Run(meta, nil)
	require.NoError(t, err)
	require.True(t, r.OK(), "round %d: check: %v", round, r.Errors)
	meta.Close()
	p, err := openFilePool(dir, false)
	require.NoError(t, err, "round %d: reopen", round)
	defer p.Close()
	// slotOf is the slot write seq went to (-1 for none).
	slotOf := func(seq uint64) int64 {
		if seq == 0 {
			return -1
		}
		c := children[(seq-1)/(killWriters*killSpan)]
		x := seq - c.base - 1
		return c.slot(int(x%killWriters), int(x/killWriters))
	}
	read := func(id uint64) map[int64]uint64 {
		v, err := p.Volume(id)
		require.NoError(t, err, "round %d: volume %d", round, id)
		buf := make([]byte, killVolumeBlocks*testBlock)
		_, err = v.ReadAt(buf, 0)
		require.NoError(t, err)
		got := map[int64]uint64{}
		for s := int64(0); s < killSlots; s++ {
			slot := s * killWriteSize
			seq := binary.LittleEndian.Uint64(buf[slot:])
			for i := 0; i < killWriteSize; i += 8 {
				require.Equal(t, seq, binary.LittleEndian.Uint64(buf[slot+int64(i):]), "round %d: volume %d slot %d is torn", round, id, slot)
			}
			if seq != 0 {
				require.Equal(t, slot, slotOf(seq), "round %d: volume %d slot %d holds write %d, which went elsewhere", round, id, slot, seq)
				got[slot] = seq
			}
		}
		return got
	}
	now := read(1)
	for slot, want := range expect {
		require.GreaterOrEqual(t, now[slot], want, "round %d: slot %d lost flushed write %d (holds %d)", round, slot, want, now[slot])
	}
	for id, want := range snaps {
		got := read(id)
		for s := int64(0); s < killSlots; s++ {
			require.Equal(t, want[s*killWriteSize], got[s*killWriteSize], "round %d: snapshot %d slot %d", round, id, s*killWriteSize)
		}
	}
	return now
}
