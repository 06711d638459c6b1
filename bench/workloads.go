package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Result is one measurement.
type Result struct {
	Value float64
	Unit  string
	// HigherBetter is true for rates, false for times.
	HigherBetter bool
}

// Workload is one thing measured on every target of its family.
type Workload struct {
	Name   string
	Family Family
	// Fresh workloads get a newly set-up target for every repeat (they
	// measure first-time work: copy-up, provisioning, copy-on-write).
	Fresh bool
	// NotFor says why the workload does not apply to a target, or "".
	NotFor func(t Target, inst *Instance) string
	// InitialNamespaceOnly keeps a union workload out of the run in a
	// user namespace: it needs what only root of the host has.
	InitialNamespaceOnly bool
	// Needs lists the commands the workload runs.
	Needs []string
	Run   func(e *Env, inst *Instance) (Result, error)
}

var fioNeeds = []string{"fio"}

var runCounter atomic.Int64

func nextRun() string { return fmt.Sprint(runCounter.Add(1)) }

func fioIOPS(job string) func(*Env, *Instance) (Result, error) {
	return func(e *Env, inst *Instance) (Result, error) {
		r, err := e.runFio(inst, job, map[string]string{"RUN": nextRun()})
		return Result{r.IOPS, "IOPS", true}, err
	}
}

func fioBandwidth(job string) func(*Env, *Instance) (Result, error) {
	return func(e *Env, inst *Instance) (Result, error) {
		r, err := e.runFio(inst, job, map[string]string{"RUN": nextRun()})
		return Result{r.MiBps, "MiB/s", true}, err
	}
}

// timed runs fn and reports its duration in seconds (lower is better).
func timed(fn func() error) (Result, error) {
	start := time.Now()
	err := fn()
	return Result{time.Since(start).Seconds(), "s", false}, err
}

// rate runs fn over n items and reports items per second.
func rate(n int, unit string, fn func() error) (Result, error) {
	start := time.Now()
	err := fn()
	return Result{float64(n) / time.Since(start).Seconds(), unit, true}, err
}

// filesIn creates n empty files in a new directory under dir.
func filesIn(dir string, n int) (string, error) {
	d := filepath.Join(dir, "meta."+nextRun())
	if err := os.Mkdir(d, 0o755); err != nil {
		return "", err
	}
	for i := 0; i < n; i++ {
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("file%06d", i)), nil, 0o644); err != nil {
			return "", err
		}
	}
	return d, nil
}

// metaDir returns a directory of the run's files made by "create" (the
// oldest one, taking it, when take is set), or makes one untimed.
func metaDir(e *Env, inst *Instance, take bool) (string, error) {
	if len(inst.metaDirs) == 0 {
		return filesIn(inst.Dir, e.size.files)
	}
	if take {
		d := inst.metaDirs[0]
		inst.metaDirs = inst.metaDirs[1:]
		return d, nil
	}
	return inst.metaDirs[len(inst.metaDirs)-1], nil
}

// needsLayers leaves copy-up out where there are no layers.
func needsLayers(t Target, _ *Instance) string {
	if t.Name() == "plain-dir" {
		return "no layers: nothing to copy up"
	}
	return ""
}

// UnionWorkloads are the union family's workloads.
func UnionWorkloads() []Workload {
	return []Workload{
		{Name: "seqread-1m", Family: Union, Needs: fioNeeds, Run: fioBandwidth("union-seqread.fio")},
		{Name: "seqwrite-1m", Family: Union, Needs: fioNeeds, Run: fioBandwidth("union-seqwrite.fio")},
		{Name: "randread-4k-psync", Family: Union, Needs: fioNeeds, Run: fioIOPS("union-randread-psync.fio")},
		{Name: "randread-4k-libaio16", Family: Union, Needs: fioNeeds, Run: fioIOPS("union-randread-libaio.fio")},
		{Name: "randwrite-4k", Family: Union, Needs: fioNeeds, Run: fioIOPS("union-randwrite.fio")},
		{Name: "create", Family: Union, Run: func(e *Env, inst *Instance) (Result, error) {
			return rate(e.size.files, "files/s", func() error {
				d, err := filesIn(inst.Dir, e.size.files)
				inst.metaDirs = append(inst.metaDirs, d)
				return err
			})
		}},
		{Name: "stat", Family: Union, Run: func(e *Env, inst *Instance) (Result, error) {
			d, err := metaDir(e, inst, false)
			if err != nil {
				return Result{}, err
			}
			return rate(e.size.files, "stats/s", func() error {
				for i := 0; i < e.size.files; i++ {
					if _, err := os.Lstat(filepath.Join(d, fmt.Sprintf("file%06d", i))); err != nil {
						return err
					}
				}
				return nil
			})
		}},
		{Name: "readdir", Family: Union, Run: func(e *Env, inst *Instance) (Result, error) {
			d, err := metaDir(e, inst, false)
			if err != nil {
				return Result{}, err
			}
			const rounds = 5
			return rate(rounds*e.size.files, "entries/s", func() error {
				for r := 0; r < rounds; r++ {
					ents, err := os.ReadDir(d)
					if err != nil {
						return err
					}
					if len(ents) != e.size.files {
						return fmt.Errorf("readdir listed %d of %d files", len(ents), e.size.files)
					}
				}
				return nil
			})
		}},
		{Name: "unlink", Family: Union, Run: func(e *Env, inst *Instance) (Result, error) {
			d, err := metaDir(e, inst, true)
			if err != nil {
				return Result{}, err
			}
			return rate(e.size.files, "unlinks/s", func() error {
				for i := 0; i < e.size.files; i++ {
					if err := os.Remove(filepath.Join(d, fmt.Sprintf("file%06d", i))); err != nil {
						return err
					}
				}
				return nil
			})
		}},
		{Name: "untar-src", Family: Union, Run: func(e *Env, inst *Instance) (Result, error) {
			d := filepath.Join(inst.Dir, "untar."+nextRun())
			if err := os.Mkdir(d, 0o755); err != nil {
				return Result{}, err
			}
			return timed(func() error {
				_, err := runCmd("tar", "-xf", e.srcTar, "-C", d)
				return err
			})
		}},
		{Name: "find-lower-tree", Family: Union, Run: func(e *Env, inst *Instance) (Result, error) {
			return timed(func() error {
				_, err := runCmd("find", filepath.Join(inst.Dir, "src"), "-type", "f")
				return err
			})
		}},
		{Name: "grep-lower-tree", Family: Union, Run: func(e *Env, inst *Instance) (Result, error) {
			return timed(func() error {
				err := exec.Command("grep", "-r", "-q", "no such string in any file 7a3f", filepath.Join(inst.Dir, "src")).Run()
				var exit *exec.ExitError
				if errors.As(err, &exit) && exit.ExitCode() == 1 {
					return nil // no match, as intended: every file was read
				}
				if err == nil {
					return errors.New("grep found the string it should not")
				}
				return err
			})
		}},
		{Name: "copyup-first-write", Family: Union, Fresh: true, NotFor: needsLayers, Run: func(e *Env, inst *Instance) (Result, error) {
			return timed(func() error {
				f, err := os.OpenFile(filepath.Join(inst.Dir, "big"), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					return err
				}
				if _, err := f.Write([]byte{1}); err != nil {
					f.Close()
					return err
				}
				return f.Close()
			})
		}},
		{Name: "copyup-chmod", Family: Union, Fresh: true, NotFor: needsLayers, Run: func(e *Env, inst *Instance) (Result, error) {
			return rate(e.size.chmodFiles, "chmods/s", func() error {
				for i := 0; i < e.size.chmodFiles; i++ {
					if err := os.Chmod(filepath.Join(inst.Dir, "chmod", fmt.Sprintf("f%05d", i)), 0o600); err != nil {
						return err
					}
				}
				return nil
			})
		}},
	}
}

// provisioned makes sure a block instance was written once.
func provisioned(e *Env, inst *Instance) error {
	if inst.provisioned {
		return nil
	}
	if _, err := e.runFio(inst, "block-provision.fio", nil); err != nil {
		return err
	}
	inst.provisioned = true
	return nil
}

func afterProvisioning(run func(*Env, *Instance) (Result, error)) func(*Env, *Instance) (Result, error) {
	return func(e *Env, inst *Instance) (Result, error) {
		if err := provisioned(e, inst); err != nil {
			return Result{}, err
		}
		return run(e, inst)
	}
}

func needsSnapshots(t Target, inst *Instance) string {
	if inst != nil && inst.Snapshot == nil {
		return "no snapshots"
	}
	return ""
}

// BlockWorkloads are the block family's workloads.
func BlockWorkloads() []Workload {
	return []Workload{
		{Name: "fresh-write-4k-qd16", Family: Block, Fresh: true, Needs: fioNeeds, Run: fioIOPS("block-fresh-write.fio")},
		{Name: "randread-4k-qd16", Family: Block, Needs: fioNeeds, Run: afterProvisioning(fioIOPS("block-randread.fio"))},
		{Name: "randwrite-4k-qd16", Family: Block, Needs: fioNeeds, Run: afterProvisioning(fioIOPS("block-randwrite.fio"))},
		{Name: "seqread-1m", Family: Block, Needs: fioNeeds, Run: afterProvisioning(fioBandwidth("block-seqread.fio"))},
		{Name: "seqwrite-1m", Family: Block, Needs: fioNeeds, Run: afterProvisioning(fioBandwidth("block-seqwrite.fio"))},
		{Name: "first-write-after-snapshot", Family: Block, Fresh: true, NotFor: needsSnapshots, Needs: fioNeeds,
			Run: func(e *Env, inst *Instance) (Result, error) {
				if err := provisioned(e, inst); err != nil {
					return Result{}, err
				}
				if err := inst.Snapshot(); err != nil {
					return Result{}, err
				}
				return fioIOPS("block-fresh-write.fio")(e, inst)
			}},
	}
}
