package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Row is the measurements of one workload on one target.
type Row struct {
	Family       Family    `json:"family"`
	Target       string    `json:"target"`
	Workload     string    `json:"workload"`
	Values       []float64 `json:"values,omitempty"`
	Unit         string    `json:"unit,omitempty"`
	HigherBetter bool      `json:"higher_better"`
	// Skipped says why there is no figure (target unavailable, or the
	// workload does not apply); Error why a run failed.
	Skipped string `json:"skipped,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Median of the row's values.
func (r *Row) Median() float64 {
	if len(r.Values) == 0 {
		return 0
	}
	v := append([]float64(nil), r.Values...)
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Spread is (max-min)/median of the row's values.
func (r *Row) Spread() float64 {
	m := r.Median()
	if len(r.Values) < 2 || m == 0 {
		return 0
	}
	lo, hi := r.Values[0], r.Values[0]
	for _, v := range r.Values {
		lo, hi = min(lo, v), max(hi, v)
	}
	return (hi - lo) / m
}

// Report is a whole run.
type Report struct {
	Date     time.Time         `json:"date"`
	Quick    bool              `json:"quick"`
	Repeat   int               `json:"repeat"`
	Machine  map[string]string `json:"machine"`
	Versions map[string]string `json:"versions"`
	Rows     []Row             `json:"rows"`
}

// Ratio is a row's median relative to the family reference on the same
// workload, oriented so that above 1 is better; 0 when unknown.
func (rep *Report) Ratio(r *Row) float64 {
	ref := rep.find(r.Family, r.Family.Reference(), r.Workload)
	if ref == nil || len(ref.Values) == 0 || len(r.Values) == 0 {
		return 0
	}
	if r.HigherBetter {
		return r.Median() / ref.Median()
	}
	return ref.Median() / r.Median()
}

func (rep *Report) find(f Family, target, workload string) *Row {
	for i := range rep.Rows {
		r := &rep.Rows[i]
		if r.Family == f && r.Target == target && r.Workload == workload {
			return r
		}
	}
	return nil
}

// Run measures every workload of each target's family, in rounds: each
// round runs every workload once on every target that measures it,
// targets side by side, so that a busy minute on a shared machine lands
// on all of them rather than on whichever target's repeats it met (a
// ratio once swung from 0.73x to 26x when targets ran their repeats one
// after the other). Rows come out target by target, as before.
func Run(cfg *Config, env *Env, targets []Target, workloads []Workload) *Report {
	rep := &Report{Date: time.Now().UTC(), Quick: cfg.Quick, Repeat: cfg.Repeat, Machine: machine(cfg.Dir), Versions: versions(cfg)}
	steps, done := 0, 0
	for _, t := range targets {
		for _, w := range workloads {
			if w.Family == t.Family() {
				steps += cfg.Repeat
			}
		}
	}
	start := time.Now()
	progress := func(t Target, w Workload, round int) {
		done++
		if cfg.Progress == nil {
			return
		}
		elapsed := time.Since(start)
		left := ""
		if done > 1 {
			left = fmt.Sprintf(", ~%s left", (elapsed / time.Duration(done-1) * time.Duration(steps-done+1)).Round(time.Second))
		}
		cfg.Progress(fmt.Sprintf("[%d/%d] %s: %s (run %d, %s elapsed%s)", done, steps, t.Name(), w.Name, round+1, elapsed.Round(time.Second), left))
	}
	runs := make([]*targetRun, len(targets))
	for i, t := range targets {
		runs[i] = newTargetRun(cfg, t, workloads)
	}
	defer func() {
		for _, tr := range runs {
			tr.close()
		}
	}()
	for round := 0; round < cfg.Repeat; round++ {
		for _, w := range workloads {
			for _, tr := range runs {
				// Families share some workload names (seqread-1m is a
				// union and a block workload): match the family first.
				if w.Family != tr.t.Family() {
					continue
				}
				row := tr.rows[w.Name]
				progress(tr.t, w, round)
				if row.Skipped == "" && row.Error == "" {
					tr.measure(env, w, row)
				}
			}
		}
	}
	for _, tr := range runs {
		for _, w := range workloads {
			if w.Family == tr.t.Family() {
				rep.Rows = append(rep.Rows, *tr.rows[w.Name])
			}
		}
	}
	return rep
}

// selective is a target that measures only some of its family's
// workloads; NotFor says why it leaves one out, or "".
type selective interface {
	NotFor(workload string) string
}

// targetRun is one target's part of a run: a row per workload of its
// family, and the instance its non-fresh workloads share from round to
// round (set up at its first use, torn down at the end of the run).
type targetRun struct {
	t         Target
	rows      map[string]*Row // by workload name, of t's family only
	shared    *Instance
	sharedErr error
}

// newTargetRun makes t's rows, already marked skipped where t cannot
// run here, leaves the workload out, or lacks a command it needs.
func newTargetRun(cfg *Config, t Target, workloads []Workload) *targetRun {
	tr := &targetRun{t: t, rows: map[string]*Row{}}
	skip := t.Skip(cfg)
	for _, w := range workloads {
		if w.Family != t.Family() {
			continue
		}
		row := &Row{Family: t.Family(), Target: t.Name(), Workload: w.Name, Skipped: skip}
		if s, ok := t.(selective); ok && row.Skipped == "" {
			row.Skipped = s.NotFor(w.Name)
		}
		for _, cmd := range w.Needs {
			if !have(cmd) && row.Skipped == "" {
				row.Skipped = cmd + " not installed"
			}
		}
		tr.rows[w.Name] = row
	}
	return tr
}

// measure runs w once on the target, adding the figure to row, or
// recording why there is none (then the row is not run again).
func (tr *targetRun) measure(env *Env, w Workload, row *Row) {
	var inst *Instance
	var err error
	if w.Fresh {
		inst, err = tr.t.Setup(env)
	} else {
		if tr.shared == nil && tr.sharedErr == nil {
			tr.shared, tr.sharedErr = tr.t.Setup(env)
		}
		inst, err = tr.shared, tr.sharedErr
	}
	if err != nil {
		row.Error = fmt.Sprintf("set-up: %v", err)
		return
	}
	if w.NotFor != nil {
		if why := w.NotFor(tr.t, inst); why != "" {
			row.Skipped = why
			if w.Fresh {
				inst.Close()
			}
			return
		}
	}
	res, err := w.Run(env, inst)
	if w.Fresh {
		inst.Close()
	}
	if err != nil {
		row.Error = err.Error()
		return
	}
	row.Values = append(row.Values, res.Value)
	row.Unit, row.HigherBetter = res.Unit, res.HigherBetter
}

func (tr *targetRun) close() {
	if tr.shared != nil {
		tr.shared.Close()
		tr.shared = nil
	}
}

func machine(scratch string) map[string]string {
	m := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "arch": runtime.GOARCH}
	// Pools, images and upper layers live there: whether it shares
	// extents (reflink) decides the copy-on-write rows.
	if fs := filesystemOf(scratch); fs != "" {
		m["scratch filesystem"] = fs
	}
	if h, err := os.Hostname(); err == nil {
		m["hostname"] = h
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if line, _, ok := strings.Cut(string(data), "\n"); ok {
			m["memory"] = strings.Join(strings.Fields(line)[1:], " ")
		}
	}
	return m
}

func versions(cfg *Config) map[string]string {
	v := map[string]string{"go": runtime.Version()}
	probe := func(key string, name string, args ...string) {
		if !have(name) {
			return
		}
		out, _ := exec.Command(name, args...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		for _, pick := range []func(string) bool{
			func(l string) bool { return strings.HasPrefix(l, name) },
			func(l string) bool { return strings.Contains(strings.ToLower(l), "version") },
		} {
			for _, l := range lines {
				if pick(l) {
					v[key] = strings.TrimSpace(l)
					return
				}
			}
		}
		if len(lines) > 0 && lines[0] != "" {
			v[key] = lines[0]
		}
	}
	probe("fio", "fio", "--version")
	probe("qemu-img", "qemu-img", "--version")
	probe("qemu-storage-daemon", "qemu-storage-daemon", "--version")
	probe("nbdkit", "nbdkit", "--version")
	probe("fuse-overlayfs", "fuse-overlayfs", "--version")
	probe("unionfs-fuse", "unionfs-fuse", "--version")
	if cfg.UnionmountBin != "" {
		v["unionmount"] = cfg.UnionmountBin
	}
	return v
}

// filesystemOf names the filesystem dir is on, or "" when unknown.
func filesystemOf(dir string) string {
	var st unix.Statfs_t
	if dir == "" || unix.Statfs(dir, &st) != nil {
		return ""
	}
	names := map[int64]string{0xef53: "ext4", 0x58465342: "xfs", 0x9123683e: "btrfs", 0x01021994: "tmpfs", 0x794c7630: "overlay"}
	if name, ok := names[int64(st.Type)]; ok {
		return name
	}
	return fmt.Sprintf("type %#x", st.Type)
}
