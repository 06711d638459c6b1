package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"
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

// Run measures every workload of each target's family.
func Run(cfg *Config, env *Env, targets []Target, workloads []Workload) *Report {
	rep := &Report{Date: time.Now().UTC(), Quick: cfg.Quick, Repeat: cfg.Repeat, Machine: machine(), Versions: versions(cfg)}
	steps, done := 0, 0
	for _, t := range targets {
		for _, w := range workloads {
			if w.Family == t.Family() {
				steps += cfg.Repeat
			}
		}
	}
	start := time.Now()
	progress := func(t Target, w Workload, rep int) {
		done++
		if cfg.Progress == nil {
			return
		}
		elapsed := time.Since(start)
		left := ""
		if done > 1 {
			left = fmt.Sprintf(", ~%s left", (elapsed / time.Duration(done-1) * time.Duration(steps-done+1)).Round(time.Second))
		}
		cfg.Progress(fmt.Sprintf("[%d/%d] %s: %s (run %d, %s elapsed%s)", done, steps, t.Name(), w.Name, rep+1, elapsed.Round(time.Second), left))
	}
	for _, t := range targets {
		var mine []Workload
		for _, w := range workloads {
			if w.Family == t.Family() {
				mine = append(mine, w)
			}
		}
		if reason := t.Skip(cfg); reason != "" {
			for _, w := range mine {
				rep.Rows = append(rep.Rows, Row{Family: t.Family(), Target: t.Name(), Workload: w.Name, Skipped: reason})
				done += cfg.Repeat
			}
			continue
		}
		rep.Rows = append(rep.Rows, runTarget(cfg, env, t, mine, progress)...)
	}
	return rep
}

// selective is a target that measures only some of its family's
// workloads; NotFor says why it leaves one out, or "".
type selective interface {
	NotFor(workload string) string
}

// runTarget runs a target's workloads: one shared instance for the ones
// that can share it, a new one per repeat for the fresh ones.
func runTarget(cfg *Config, env *Env, t Target, workloads []Workload, progress func(Target, Workload, int)) []Row {
	var rows []Row
	var shared *Instance
	var sharedErr error
	defer func() {
		if shared != nil {
			shared.Close()
		}
	}()
	for _, w := range workloads {
		row := Row{Family: t.Family(), Target: t.Name(), Workload: w.Name}
		if s, ok := t.(selective); ok {
			row.Skipped = s.NotFor(w.Name)
		}
		for _, cmd := range w.Needs {
			if !have(cmd) {
				row.Skipped = cmd + " not installed"
			}
		}
		for r := 0; r < cfg.Repeat; r++ {
			progress(t, w, r)
			if row.Skipped != "" || row.Error != "" {
				continue
			}
			var inst *Instance
			var err error
			if w.Fresh {
				inst, err = t.Setup(env)
			} else {
				if shared == nil && sharedErr == nil {
					shared, sharedErr = t.Setup(env)
				}
				inst, err = shared, sharedErr
			}
			if err != nil {
				row.Error = fmt.Sprintf("set-up: %v", err)
				continue
			}
			if w.NotFor != nil {
				if why := w.NotFor(t, inst); why != "" {
					row.Skipped = why
					if w.Fresh {
						inst.Close()
					}
					continue
				}
			}
			res, err := w.Run(env, inst)
			if w.Fresh {
				inst.Close()
			}
			if err != nil {
				row.Error = err.Error()
				continue
			}
			row.Values = append(row.Values, res.Value)
			row.Unit, row.HigherBetter = res.Unit, res.HigherBetter
		}
		rows = append(rows, row)
	}
	return rows
}

func machine() map[string]string {
	m := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "arch": runtime.GOARCH}
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
