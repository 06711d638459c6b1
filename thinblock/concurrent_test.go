package thinblock_test

import (
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
)

// The concurrency model: every write stamps each 512-byte sector it
// covers with its own id, so a read says which write each sector came
// from. Each request is timed on one logical clock (start, end); a
// sector read in [rs, re] may hold the value of any write to it that
// started before re, or the value before the round, unless a later write
// to it was acknowledged before rs (a register, linearizable per
// sector). Zeroing is a write of id 0. Overlapping concurrent writes may
// leave either value; an acknowledged write is never lost to zeros or to
// older data.
const (
	cSector     = 512
	cVolBlocks  = 32
	cVolBytes   = cVolBlocks * testBlock
	cSectors    = cVolBytes / cSector
	cWorkers    = 16
	cSlices     = testBlock / 4096 // 4 KiB pieces of a block
	cOpsPerTurn = 48
	cMaxLive    = 6
	// badSector marks a sector that is neither zeros nor one whole stamp.
	badSector = ^uint64(0)
)

func sectorStamp(b []byte, id uint64, sector int64) {
	le := binary.LittleEndian
	x := id*0x9e3779b97f4a7c15 ^ uint64(sector)
	for i := 0; i < cSector; i += 8 {
		le.PutUint64(b[i:], x)
		x = x*6364136223846793005 + 1442695040888963407
	}
	le.PutUint64(b[0:], id)
}

// sectorID says which write a sector holds: 0 for zeros, badSector for
// anything else that is not exactly one write's stamp.
func sectorID(b []byte, sector int64) uint64 {
	id := binary.LittleEndian.Uint64(b)
	if id == 0 {
		for _, c := range b[:cSector] {
			if c != 0 {
				return badSector
			}
		}
		return 0
	}
	var want [cSector]byte
	sectorStamp(want[:], id, sector)
	if string(want[:]) != string(b[:cSector]) {
		return badSector
	}
	return id
}

// ioRec is one request of a round, on the logical clock.
type ioRec struct {
	kind       string // write, zero, read
	vol        uint64
	off, n     int64
	id         uint64 // the value written (0 for zeroing)
	start, end int64
	got        []uint64 // for reads: the id found in each sector
}

// concRun drives one pool through rounds of concurrent requests.
type concRun struct {
	t     *testing.T
	p     *thinblock.Pool
	clock atomic.Int64
	ids   atomic.Uint64
	// state is the exact id in each sector of each live volume at the
	// start of a round.
	state  map[uint64][]uint64
	live   []uint64
	nextID uint64
	mu     sync.Mutex
	recs   []*ioRec
	snaps  []snapRec
}

// snapRec is a snapshot taken while requests ran.
type snapRec struct {
	id, origin uint64
	start, end int64
}

func (r *concRun) add(rec *ioRec) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

func (r *concRun) volume(id uint64) *thinblock.Volume {
	v, err := r.p.Volume(id)
	require.NoError(r.t, err)
	return v
}

func (r *concRun) write(v *thinblock.Volume, off, n int64) error {
	id := r.ids.Add(1)
	buf := make([]byte, n)
	for s := int64(0); s < n; s += cSector {
		sectorStamp(buf[s:], id, (off+s)/cSector)
	}
	rec := &ioRec{kind: "write", vol: v.ID(), off: off, n: n, id: id, start: r.clock.Add(1)}
	_, err := v.WriteAt(buf, off)
	rec.end = r.clock.Add(1)
	r.add(rec)
	return err
}

func (r *concRun) zero(v *thinblock.Volume, off, n int64, discard bool) error {
	rec := &ioRec{kind: "zero", vol: v.ID(), off: off, n: n, start: r.clock.Add(1)}
	var err error
	if discard {
		err = v.Discard(off, n)
	} else {
		err = v.WriteZeroes(off, n, false)
	}
	rec.end = r.clock.Add(1)
	r.add(rec)
	return err
}

func (r *concRun) read(v *thinblock.Volume, off, n int64) error {
	buf := make([]byte, n)
	rec := &ioRec{kind: "read", vol: v.ID(), off: off, n: n, start: r.clock.Add(1)}
	_, err := v.ReadAt(buf, off)
	rec.end = r.clock.Add(1)
	for s := int64(0); s < n; s += cSector {
		rec.got = append(rec.got, sectorID(buf[s:], (off+s)/cSector))
	}
	r.add(rec)
	return err
}

// worker issues a turn of random requests on the round's volumes: most
// write its own 4 KiB piece of a block (so 16 workers write distinct
// pieces of the same shared blocks), others overlap anywhere, read,
// zero or discard, or overwrite whole blocks.
func (r *concRun) worker(w int, seed int64, vols []*thinblock.Volume) error {
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < cOpsPerTurn; i++ {
		v := vols[rng.Intn(len(vols))]
		block := int64(rng.Intn(cVolBlocks))
		anywhere := func(most int64) (int64, int64) {
			off := int64(rng.Intn(cSectors)) * cSector
			n := min(int64(1+rng.Intn(int(most))), (cVolBytes-off)/cSector) * cSector
			return off, n
		}
		var err error
		switch k := rng.Intn(100); {
		case k < 40:
			err = r.write(v, block*testBlock+int64(w%cSlices)*4096, 4096)
		case k < 55:
			off, n := anywhere(24)
			err = r.write(v, off, n)
		case k < 85:
			off, n := anywhere(160)
			err = r.read(v, off, n)
		case k < 90: // whole blocks, one or two (merged into one write)
			err = r.write(v, block*testBlock, min(int64(1+rng.Intn(2)), cVolBlocks-block)*testBlock)
		case k < 95:
			off, n := anywhere(3 * testBlock / cSector)
			err = r.zero(v, off, n, true)
		default:
			off, n := anywhere(40)
			err = r.zero(v, off, n, false)
		}
		if err != nil {
			return fmt.Errorf("worker %d: %w", w, err)
		}
	}
	return nil
}

// acceptable reports whether sector sec of volume vol may hold val for
// a read in [rs, re], given the round's writes to it.
func acceptable(initial uint64, writes []*ioRec, val uint64, rs, re int64) bool {
	// A source is superseded when a write that started after it was
	// acknowledged had itself been acknowledged before the read began.
	superseded := func(ack int64) bool {
		for _, w := range writes {
			if w.start > ack && w.end < rs {
				return true
			}
		}
		return false
	}
	if val == initial && !superseded(-1) {
		return true
	}
	for _, w := range writes {
		if w.id == val && w.start < re && !superseded(w.end) {
			return true
		}
	}
	return false
}

// inFlight reports whether one of writes ran while [rs, re] did.
func inFlight(writes []*ioRec, rs, re int64) bool {
	for _, w := range writes {
		if w.start < re && w.end > rs {
			return true
		}
	}
	return false
}

// index lists the round's writes to each sector of each volume.
func (r *concRun) index() map[uint64][][]*ioRec {
	idx := map[uint64][][]*ioRec{}
	for _, rec := range r.recs {
		if rec.kind == "read" {
			continue
		}
		if idx[rec.vol] == nil {
			idx[rec.vol] = make([][]*ioRec, cSectors)
		}
		for s := rec.off / cSector; s < (rec.off+rec.n)/cSector; s++ {
			idx[rec.vol][s] = append(idx[rec.vol][s], rec)
		}
	}
	return idx
}

// problems counts what the round got wrong, with a few examples.
type problems struct {
	lost, badReads, badSnaps, garbage int
	examples                          []string
}

func (pr *problems) note(count *int, format string, args ...any) {
	*count++
	if len(pr.examples) < 8 {
		pr.examples = append(pr.examples, fmt.Sprintf(format, args...))
	}
}

func (pr *problems) any() bool { return pr.lost+pr.badReads+pr.badSnaps+pr.garbage > 0 }

// settle checks the round: every read against the model, then every
// live volume read whole (after all requests), which becomes the exact
// state of the next round.
func (r *concRun) settle(round int) problems {
	var pr problems
	idx := r.index()
	byID := map[uint64]*ioRec{}
	for _, rec := range r.recs {
		if rec.kind == "write" {
			byID[rec.id] = rec
		}
	}
	// history says where a value came from and what else was written
	// to the sector, for the failure message.
	history := func(vol uint64, s int64, val uint64) string {
		h := ""
		if w := byID[val]; w != nil {
			h = fmt.Sprintf("; write %d went to volume %d at %d+%d in [%d,%d]", val, w.vol, w.off, w.n, w.start, w.end)
		}
		for _, w := range idx[vol][s] {
			h += fmt.Sprintf("; %s %d in [%d,%d]", w.kind, w.id, w.start, w.end)
		}
		return h
	}
	writesTo := func(vol uint64, s int64) []*ioRec {
		if idx[vol] == nil {
			return nil
		}
		return idx[vol][s]
	}
	for _, rec := range r.recs {
		if rec.kind != "read" {
			continue
		}
		for i, got := range rec.got {
			s := rec.off/cSector + int64(i)
			if got == badSector {
				// A file gives no sector atomicity: a read racing a write
				// to the same page may see part of each. Nothing else may
				// leave a sector that is not one write's.
				if !inFlight(writesTo(rec.vol, s), rec.start, rec.end) {
					pr.note(&pr.garbage, "read of volume %d sector %d in [%d,%d] found neither zeros nor one write%s",
						rec.vol, s, rec.start, rec.end, history(rec.vol, s, got))
				}
			} else if !acceptable(r.state[rec.vol][s], writesTo(rec.vol, s), got, rec.start, rec.end) {
				pr.note(&pr.badReads, "read of volume %d sector %d in [%d,%d] found write %d (before the round: %d)%s",
					rec.vol, s, rec.start, rec.end, got, r.state[rec.vol][s], history(rec.vol, s, got))
			}
		}
	}
	now := r.clock.Add(1)
	next := map[uint64][]uint64{}
	buf := make([]byte, cVolBytes)
	for _, id := range r.live {
		_, err := r.volume(id).ReadAt(buf, 0)
		require.NoError(r.t, err)
		ids := make([]uint64, cSectors)
		for s := range ids {
			ids[s] = sectorID(buf[s*cSector:], int64(s))
		}
		next[id] = ids
	}
	for _, sn := range r.snaps {
		// Not written this round: it holds what its origin held at
		// some instant while Snapshot ran.
		for s, got := range next[sn.id] {
			if !acceptable(r.state[sn.origin][s], writesTo(sn.origin, int64(s)), got, sn.start, sn.end) {
				pr.note(&pr.badSnaps, "snapshot %d of %d in [%d,%d]: sector %d holds write %d%s", sn.id, sn.origin, sn.start, sn.end, s, got,
					history(sn.origin, int64(s), got))
			}
		}
	}
	for id, ids := range next {
		if _, ok := r.state[id]; !ok {
			continue // a snapshot taken this round, checked above
		}
		for s, got := range ids {
			if got == badSector {
				pr.note(&pr.garbage, "round %d: volume %d sector %d holds neither zeros nor one write", round, id, s)
			} else if !acceptable(r.state[id][s], writesTo(id, int64(s)), got, now, now) {
				pr.note(&pr.lost, "round %d: volume %d sector %d holds write %d, not the last acknowledged (before the round: %d)%s",
					round, id, s, got, r.state[id][s], history(id, int64(s), got))
			}
		}
	}
	r.state, r.recs, r.snaps = next, nil, nil
	return pr
}

// round runs the workers on a few volumes, with a snapshot taken before
// the round or while it runs, an older volume deleted while it runs, and
// commits racing with everything.
func (r *concRun) round(round int, rng *rand.Rand) error {
	origin := r.live[rng.Intn(len(r.live))]
	snap := r.nextID
	r.nextID++
	active := []uint64{origin}
	during := rng.Intn(3) == 0
	if !during {
		// Before the round: the new snapshot and its origin are both
		// written, each copying blocks the other still shares.
		if err := r.p.Snapshot(snap, origin); err != nil {
			return err
		}
		r.state[snap] = append([]uint64(nil), r.state[origin]...)
		r.live = append(r.live, snap)
		active = append(active, snap)
	}
	if other := r.live[rng.Intn(len(r.live))]; rng.Intn(2) == 0 && other != origin && other != snap {
		active = append(active, other)
	}
	var victim uint64
	if len(r.live) >= cMaxLive {
		for _, id := range r.live {
			if !containsID(active, id) {
				victim = id
				break
			}
		}
	}
	vols := make([]*thinblock.Volume, len(active))
	for i, id := range active {
		vols[i] = r.volume(id)
	}
	var wg sync.WaitGroup
	errs := make(chan error, cWorkers+3)
	stop := make(chan struct{})
	for w := 0; w < cWorkers; w++ {
		wg.Add(1)
		go func(w int, seed int64) {
			defer wg.Done()
			if err := r.worker(w, seed, vols); err != nil {
				errs <- err
			}
		}(w, rng.Int63())
	}
	var side sync.WaitGroup
	side.Add(1)
	go func(rng *rand.Rand) { // flushes racing with the requests
		defer side.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(1+rng.Intn(3)) * time.Millisecond):
				if err := r.p.Commit(); err != nil {
					errs <- fmt.Errorf("commit: %w", err)
					return
				}
			}
		}
	}(rand.New(rand.NewSource(rng.Int63())))
	if during {
		side.Add(1)
		go func() {
			defer side.Done()
			time.Sleep(time.Millisecond)
			rec := snapRec{id: snap, origin: origin, start: r.clock.Add(1)}
			err := r.p.Snapshot(snap, origin)
			rec.end = r.clock.Add(1)
			if err != nil {
				errs <- fmt.Errorf("snapshot while writing: %w", err)
				return
			}
			r.mu.Lock()
			r.snaps = append(r.snaps, rec)
			r.mu.Unlock()
		}()
	}
	if victim != 0 {
		side.Add(1)
		go func() {
			defer side.Done()
			time.Sleep(2 * time.Millisecond)
			if err := r.p.DeleteVolume(victim); err != nil {
				errs <- fmt.Errorf("delete %d while writing: %w", victim, err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	side.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	if during {
		r.live = append(r.live, snap)
	}
	if victim != 0 {
		r.live = removeID(r.live, victim)
		delete(r.state, victim)
	}
	return nil
}

func containsID(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func removeID(ids []uint64, id uint64) []uint64 {
	out := ids[:0]
	for _, x := range ids {
		if x != id {
			out = append(out, x)
		}
	}
	return out
}

// filesIn opens a pool's metadata and data files in dir, made afresh,
// with a function that opens them again.
func filesIn(t *testing.T, dir string) (blockdev.Device, blockdev.Device, func() (blockdev.Device, blockdev.Device)) {
	open := func(create bool) (blockdev.Device, blockdev.Device) {
		meta, err := blockdev.OpenFile(filepath.Join(dir, "meta"), create)
		require.NoError(t, err)
		data, err := blockdev.OpenFile(filepath.Join(dir, "data"), create)
		require.NoError(t, err)
		t.Cleanup(func() { meta.Close(); data.Close() })
		return meta, data
	}
	meta, data := open(true)
	return meta, data, func() (blockdev.Device, blockdev.Device) { return open(false) }
}

// TestConcurrentIOOnSharedBlocksMatchesModel races 16 goroutines reading,
// writing (distinct 4 KiB pieces of the same blocks, and overlapping
// ranges), zeroing and discarding on volumes that share blocks with
// their snapshots and snapshots of snapshots, while snapshots are taken,
// volumes deleted and the pool committed; every read and every volume
// after each round must agree with the model, snapshots must keep what
// their origin held, and the pool must check clean and reopen the same.
func TestConcurrentIOOnSharedBlocksMatchesModel(t *testing.T) {
	rounds := 20
	switch {
	case os.Getenv("UNIONMOUNT_LONG") != "":
		rounds = 150
	case raceBuild:
		rounds = 6
	}
	devices := map[string]func(t *testing.T) (meta, data blockdev.Device, reopen func() (blockdev.Device, blockdev.Device)){
		"memory": func(t *testing.T) (blockdev.Device, blockdev.Device, func() (blockdev.Device, blockdev.Device)) {
			meta, data := blockdev.NewMem(), blockdev.NewMem()
			return meta, data, func() (blockdev.Device, blockdev.Device) { return meta, data }
		},
		"file": func(t *testing.T) (blockdev.Device, blockdev.Device, func() (blockdev.Device, blockdev.Device)) {
			return filesIn(t, t.TempDir())
		},
		// There a block's copy shares the extents of the block it
		// copies (copy_file_range), and writes race the filesystem's
		// own copy-on-write.
		"reflink file": func(t *testing.T) (blockdev.Device, blockdev.Device, func() (blockdev.Device, blockdev.Device)) {
			return filesIn(t, reflinkDir(t))
		},
	}
	for _, name := range []string{"memory", "file", "reflink file"} {
		t.Run("on the "+name+" device", func(t *testing.T) {
			meta, data, reopen := devices[name](t)
			p, err := thinblock.Create(meta, data, thinblock.CreateOptions{BlockSize: testBlock,
				DataSize: 16 * cVolBlocks * testBlock}, thinblock.Options{CommitInterval: -1})
			require.NoError(t, err)
			require.NoError(t, p.CreateVolume(1, cVolBytes))
			r := &concRun{t: t, p: p, state: map[uint64][]uint64{1: make([]uint64, cSectors)}, live: []uint64{1}, nextID: 2}
			rng := rand.New(rand.NewSource(int64(len(name))))
			var total problems
			for round := 0; round < rounds; round++ {
				require.NoError(t, r.round(round, rng), "round %d", round)
				pr := r.settle(round)
				total.lost += pr.lost
				total.badReads += pr.badReads
				total.badSnaps += pr.badSnaps
				total.garbage += pr.garbage
				if len(total.examples) < 8 {
					total.examples = append(total.examples, pr.examples...)
				}
			}
			require.False(t, total.any(), "%d sectors lost an acknowledged write, %d sectors read wrong, "+
				"%d snapshot sectors differ from their origin, %d sectors hold garbage; for example:\n%v",
				total.lost, total.badReads, total.badSnaps, total.garbage, total.examples)
			require.NoError(t, p.Close())
			rm, rd := reopen()
			rep, err := check.Run(rm, nil)
			require.NoError(t, err)
			require.True(t, rep.OK(), "check: %v", rep.Errors)
			p, err = thinblock.Open(rm, rd, thinblock.Options{CommitInterval: -1})
			require.NoError(t, err)
			r.p = p
			ids := append([]uint64(nil), r.live...)
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			buf := make([]byte, cVolBytes)
			for _, id := range ids {
				_, err := r.volume(id).ReadAt(buf, 0)
				require.NoError(t, err)
				for s := 0; s < cSectors; s++ {
					require.Equal(t, r.state[id][s], sectorID(buf[s*cSector:], int64(s)), "after reopen: volume %d sector %d", id, s)
				}
			}
			require.NoError(t, p.Close())
		})
	}
}
