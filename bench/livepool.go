package bench

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The live-pool rows: what Docker's devicemapper driver asked of dm-thin,
// asked of a running server. A volume is snapshotted while fio writes to
// it, a volume is started from a base image and read, and a volume's
// space is given back to the host by a delete or a discard. thinblock's
// server is driven through its control socket; its qcow2 peer is
// qemu-storage-daemon driven over QMP (live snapshots) and qemu-img with
// qemu-nbd (volume start), as a qcow2-based manager would do it.

// liveVolumes is what a live-pool target offers its workloads. The
// instance's URI serves the volume being written; none of these is
// called from more than one goroutine at a time.
type liveVolumes interface {
	// snapshot snapshots the served volume while it is in use, as one
	// request to the running server. Later writes go to the origin
	// (thinblock) or to the new overlay, which the export follows
	// (qcow2).
	snapshot() error
	// prepareBase writes the base image volumes start from (untimed).
	prepareBase() error
	// startFromBase makes a new volume from the base, exports it and
	// returns its NBD URI.
	startFromBase() (string, error)
	// deleteVolume deletes the served volume; errThinBusy while a client
	// still holds it (thinblock only: see liveTarget.NotFor).
	deleteVolume() error
	// dataFile is the host file holding the served volume's data, whose
	// allocated blocks show what the host got back.
	dataFile() string
}

// basePattern is the byte the base image is filled with, so the first
// read of a started volume checks it got the base's data.
const basePattern = 0x5a

// snapshotEvery is how often the volume being written is snapshotted, as
// in scripts/snapshot-pause.sh.
const snapshotEvery = 200 * time.Millisecond

// giveBackWait bounds the wait for the host to get the space back; a
// thinblock pool punches freed blocks after the commit that frees them,
// at most a second later.
const giveBackWait = 10 * time.Second

// Figures measured together: the workload that runs the measurement
// returns its own, and the others of the same run wait in the Env for
// their workloads, so that all come from the same runs.
const (
	figSnapIOPS      = "randwrite-4k-while-snapshotting"
	figSnapP50       = "snapshot-request-p50"
	figSnapP90       = "snapshot-request-p90"
	figDeleteMiB     = "delete-give-back"
	figDeleteTime    = "delete-give-back-time"
	figDiscardMiB    = "discard-give-back"
	figDiscardTime   = "discard-give-back-time"
	figVolumeStart   = "volume-start"
	liveDeleteReason = "a qcow2 image has no pool: deleting one is its filesystem's work, nothing of qemu's to measure"
)

// LivePoolWorkloads are the live-pool family's workloads.
func LivePoolWorkloads() []Workload {
	snapshotRun := func(e *Env, inst *Instance) (map[string]figure, error) { return snapshotWhileWriting(e, inst) }
	deleteRun := func(e *Env, inst *Instance) (map[string]figure, error) {
		return giveBack(e, inst, figDeleteMiB, figDeleteTime, inst.live.deleteVolume)
	}
	discardRun := func(e *Env, inst *Instance) (map[string]figure, error) {
		return giveBack(e, inst, figDiscardMiB, figDiscardTime, func() error {
			_, err := runCmd("qemu-io", "-f", "raw", "-c", fmt.Sprintf("discard 0 %d", e.size.blockBytes), inst.URI)
			return err
		})
	}
	fio := []string{"fio"}
	return []Workload{
		{Name: figSnapIOPS, Family: LivePool, Fresh: true, Needs: fio, Run: together(figSnapIOPS, snapshotRun)},
		{Name: figSnapP50, Family: LivePool, Fresh: true, Needs: fio, Run: together(figSnapP50, snapshotRun)},
		{Name: figSnapP90, Family: LivePool, Fresh: true, Needs: fio, Run: together(figSnapP90, snapshotRun)},
		{Name: figVolumeStart, Family: LivePool, Needs: []string{"qemu-io"}, Run: volumeStart},
		{Name: figDeleteMiB, Family: LivePool, Fresh: true, Needs: fio, Run: together(figDeleteMiB, deleteRun)},
		{Name: figDeleteTime, Family: LivePool, Fresh: true, Needs: fio, Run: together(figDeleteTime, deleteRun)},
		{Name: figDiscardMiB, Family: LivePool, Fresh: true, Needs: []string{"fio", "qemu-io"}, Run: together(figDiscardMiB, discardRun)},
		{Name: figDiscardTime, Family: LivePool, Fresh: true, Needs: []string{"fio", "qemu-io"}, Run: together(figDiscardTime, discardRun)},
	}
}

// figure is one of the figures a measurement gives, or why it has none.
type figure struct {
	Result
	err error
}

// together runs a measurement that gives several figures: it takes the
// wanted figure from an earlier run of the same target when one waits
// in the Env, else runs the measurement and leaves the other figures
// for their workloads.
func together(want string, measure func(*Env, *Instance) (map[string]figure, error)) func(*Env, *Instance) (Result, error) {
	return func(e *Env, inst *Instance) (Result, error) {
		key := inst.liveName + "/" + want
		if f, ok := e.takeFigure(key); ok {
			return f.Result, f.err
		}
		figs, err := measure(e, inst)
		if err != nil {
			return Result{}, err
		}
		for name, f := range figs {
			if name != want {
				e.putFigure(inst.liveName+"/"+name, f)
			}
		}
		f, ok := figs[want]
		if !ok {
			return Result{}, fmt.Errorf("the measurement gave no %s", want)
		}
		return f.Result, f.err
	}
}

func (e *Env) takeFigure(key string) (figure, bool) {
	q := e.pending[key]
	if len(q) == 0 {
		return figure{}, false
	}
	e.pending[key] = q[1:]
	return q[0], true
}

func (e *Env) putFigure(key string, f figure) {
	if e.pending == nil {
		e.pending = map[string][]figure{}
	}
	e.pending[key] = append(e.pending[key], f)
}

// snapshotWhileWriting fills the served volume, then runs 4 KiB random
// writes at iodepth 16 over NBD while the volume is snapshotted every
// snapshotEvery; it gives fio's IOPS and the snapshot requests' median
// and 90th percentile latency.
func snapshotWhileWriting(e *Env, inst *Instance) (map[string]figure, error) {
	size := fmt.Sprint(e.size.blockBytes)
	if _, err := e.runFio(inst, "block-provision.fio", map[string]string{"SIZE": size}); err != nil {
		return nil, err
	}
	stop := make(chan struct{})
	type loopResult struct {
		took []time.Duration
		err  error
	}
	done := make(chan loopResult, 1)
	go func() {
		var r loopResult
		defer func() { done <- r }()
		tick := time.NewTicker(snapshotEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			start := time.Now()
			if err := inst.live.snapshot(); err != nil {
				r.err = fmt.Errorf("snapshot %d: %w", len(r.took)+1, err)
				return
			}
			r.took = append(r.took, time.Since(start))
		}
	}()
	fio, err := e.runFio(inst, "live-randwrite.fio", map[string]string{"SIZE": size, "RUN": nextRun(),
		"RUNTIME": fmt.Sprint(int(e.size.liveRuntime.Seconds()))})
	close(stop)
	loop := <-done
	if err != nil {
		return nil, err
	}
	if loop.err != nil {
		return nil, loop.err
	}
	if len(loop.took) == 0 {
		return nil, errors.New("no snapshot was taken while fio ran")
	}
	ms := func(d time.Duration) figure {
		return figure{Result: Result{float64(d) / float64(time.Millisecond), "ms", false}}
	}
	return map[string]figure{
		figSnapIOPS: {Result: Result{fio.IOPS, "IOPS", true}},
		figSnapP50:  ms(percentile(loop.took, 0.5)),
		figSnapP90:  ms(percentile(loop.took, 0.9)),
	}, nil
}

// percentile is the nearest-rank percentile p (0 < p <= 1) of v.
func percentile(v []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// volumeStart times what starting a container's volume takes: a new
// volume from the base image, its export, and a client's first read,
// which must find the base's data.
func volumeStart(e *Env, inst *Instance) (Result, error) {
	if !inst.baseReady {
		if err := inst.live.prepareBase(); err != nil {
			return Result{}, fmt.Errorf("base image: %w", err)
		}
		inst.baseReady = true
	}
	return timed(func() error {
		uri, err := inst.live.startFromBase()
		if err != nil {
			return err
		}
		out, err := runCmd("qemu-io", "-r", "-f", "raw", "-c", fmt.Sprintf("read -P %#x 0 4k", basePattern), uri)
		if err != nil {
			return err
		}
		// qemu-io reports a pattern mismatch and still exits 0.
		if strings.Contains(out, "Pattern verification failed") {
			return fmt.Errorf("the new volume's first block is not the base's: %s", lastLines(out, 2))
		}
		return nil
	})
}

// giveBack fills the served volume, runs action (a delete or a discard),
// and watches the data file's allocated blocks: it gives the MiB the
// host got back and the seconds from the request until it had the whole
// volume back (less 1 %, for the file's own metadata), waiting at most
// giveBackWait.
func giveBack(e *Env, inst *Instance, mibFig, timeFig string, action func() error) (map[string]figure, error) {
	file := inst.live.dataFile()
	before, err := allocated(file)
	if err != nil {
		return nil, err
	}
	if _, err := e.runFio(inst, "block-provision.fio", map[string]string{"SIZE": fmt.Sprint(e.size.blockBytes)}); err != nil {
		return nil, err
	}
	full, err := allocated(file)
	if err != nil {
		return nil, err
	}
	if full-before < e.size.blockBytes*9/10 {
		return nil, fmt.Errorf("filling the volume allocated %d MiB of %s, not the volume's %d MiB", (full-before)>>20, file, e.size.blockBytes>>20)
	}
	var start time.Time
	for first := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		// The client fio was may not be gone from the server yet: the
		// clock starts at the request that is accepted.
		start = time.Now()
		err = action()
		if !errors.Is(err, errThinBusy) || time.Since(first) > 5*time.Second {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	goal := e.size.blockBytes * 99 / 100
	var given int64
	var took time.Duration
	for {
		now, err := allocated(file)
		if err != nil {
			return nil, err
		}
		given, took = full-now, time.Since(start)
		if given >= goal || took > giveBackWait {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	figs := map[string]figure{mibFig: {Result: Result{float64(given) / (1 << 20), "MiB", true}}}
	if given >= goal {
		figs[timeFig] = figure{Result: Result{took.Seconds(), "s", false}}
	} else {
		figs[timeFig] = figure{err: fmt.Errorf("the host got %d MiB of %d back within %s", given>>20, e.size.blockBytes>>20, giveBackWait)}
	}
	return figs, nil
}

// allocated is what the host has allocated for a file, in bytes.
func allocated(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}
