// Command unionbench measures this project's union filesystem and block
// server against their peers (kernel overlay, fuse-overlayfs,
// unionfs-fuse; podman on each as its storage; qemu-nbd, nbdkit,
// dm-thin, a raw file; a live pool against qemu-storage-daemon's
// qcow2) with the same workloads, and reports ratios as a
// Markdown table, JSON and charts.
//
//	unionbench [--quick] [--targets a,b] [--workloads x,y] [--out DIR]
//	unionbench compare OLD.json NEW.json
package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/unionmount/unionmount/bench"
	"github.com/unionmount/unionmount/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "compare" {
		return compare(args[1:], stdout, stderr)
	}
	fs := pflag.NewFlagSet("unionbench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "small sizes and one repeat: well under a minute")
	targets := fs.String("targets", "", "comma-separated targets (default: all)")
	workloads := fs.String("workloads", "", "comma-separated workloads, or prefixes of their names (default: all)")
	out := fs.String("out", "unionbench-out", "directory for the JSON, Markdown and charts")
	repeat := fs.Int("repeat", 0, "runs per figure, made in rounds that each run every target once (default 2, 1 with --quick)")
	unionmount := fs.String("unionmount", "", "unionmount binary (default: beside this one, then PATH)")
	thinblock := fs.String("thinblock", "", "thinblock binary (default: beside this one, then PATH)")
	passthroughHP := fs.String("passthrough-hp", "", "libfuse's passthrough_hp built with io_uring, the floor target (default: where scripts/build-passthrough-hp.sh puts it, then PATH)")
	list := fs.Bool("list", false, "list the targets and workloads and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	rootless := fs.Bool("userns", true, "also run the union workloads on "+strings.Join(bench.RootlessTargets, " and ")+
		" as root of a user namespace, as rootless containers run (needs root to map the ids)")
	turnOnURing := fs.Bool("fuse-uring", true, "as root, switch FUSE-over-io_uring on for the run (the fuse module's enable_uring) when it is off, and back at the end, so the unionmount-uring target can run")
	inside := fs.Bool(insideFlag[2:], false, "")
	fs.MarkHidden(insideFlag[2:])
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.String("unionbench"))
		return 0
	}
	cfg := &bench.Config{Quick: *quick, Repeat: *repeat,
		UnionmountBin: findBinary(*unionmount, "unionmount"), ThinblockBin: findBinary(*thinblock, "thinblock"),
		PassthroughHPBin: findPassthroughHP(*passthroughHP),
		// The run in a user namespace cannot write the switch: it
		// finds it as the run outside left it.
		TurnOnURing: *turnOnURing && !*inside}
	if cfg.Repeat <= 0 {
		cfg.Repeat = 2
		if cfg.Quick {
			cfg.Repeat = 1
		}
	}
	allTargets := bench.AllTargets()
	allWorkloads := bench.AllWorkloads(cfg)
	if *list {
		for _, t := range allTargets {
			fmt.Fprintf(stdout, "target   %-6s %s\n", t.Family(), t.Name())
		}
		for _, w := range allWorkloads {
			fmt.Fprintf(stdout, "workload %-6s %s\n", w.Family, w.Name)
		}
		return 0
	}
	chosenT := selectTargets(allTargets, *targets, stderr)
	if *inside {
		// The parent's reference for this run is one of the targets
		// named; kernel overlay's privileged mount cannot run here.
		chosenT = exactTargets(chosenT, *targets)
	}
	chosenW := selectWorkloads(allWorkloads, *workloads, stderr)
	if len(chosenT) == 0 || len(chosenW) == 0 {
		fmt.Fprintln(stderr, "unionbench: nothing to run (see --list)")
		return 2
	}
	if !haveFio() {
		fmt.Fprintln(stderr, "unionbench: fio is not installed: its workloads are skipped (apt-get install fio)")
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "unionbench: not root: kernel overlay and the targets that mount as root are skipped")
	}
	scratch, err := os.MkdirTemp("", "unionbench-")
	if err != nil {
		fmt.Fprintf(stderr, "unionbench: %v\n", err)
		return 1
	}
	os.Chmod(scratch, 0o755)
	defer os.RemoveAll(scratch)
	cfg.Dir = scratch
	if isTerminal(stderr) {
		// A progress line on a terminal; a log or CI gets only the
		// results and what went wrong.
		cfg.Progress = func(line string) { fmt.Fprintf(stderr, "\r\033[K%s", line) }
	}
	jobs, err := bench.WriteJobFiles(scratch)
	if err != nil {
		fmt.Fprintf(stderr, "unionbench: %v\n", err)
		return 1
	}
	fmt.Fprintln(stderr, "unionbench: preparing the lower layer and the source tarball")
	env, err := bench.NewEnv(cfg, jobs)
	if err != nil {
		fmt.Fprintf(stderr, "unionbench: prepare: %v\n", err)
		return 1
	}
	for _, t := range chosenT {
		if t.Name() == "unionmount-uring" && cfg.TurnOnURing {
			restore, err := bench.EnableFUSEURing()
			if err != nil {
				fmt.Fprintf(stderr, "unionbench: %v\n", err)
			}
			defer restore()
			break
		}
	}
	rep := bench.Run(cfg, env, chosenT, chosenW)
	if names := unionWorkloads(chosenW); *rootless && !*inside && len(names) > 0 && (*targets == "" || strings.Contains(*targets, "unionmount")) {
		fmt.Fprintln(stderr, "unionbench: the union workloads again, in a user namespace")
		rep.Rows = append(rep.Rows, rootlessRows(cfg, names, stderr)...)
	}
	if isTerminal(stderr) {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(stderr, "unionbench: %v\n", err)
		return 1
	}
	var md strings.Builder
	rep.Markdown(&md)
	fmt.Fprint(stdout, md.String())
	files := []string{filepath.Join(*out, "unionbench.json"), filepath.Join(*out, "unionbench.md")}
	if err := rep.WriteJSON(files[0]); err != nil {
		fmt.Fprintf(stderr, "unionbench: %v\n", err)
		return 1
	}
	if err := os.WriteFile(files[1], []byte(md.String()), 0o644); err != nil {
		fmt.Fprintf(stderr, "unionbench: %v\n", err)
		return 1
	}
	charts, err := rep.Charts(*out)
	if err != nil {
		fmt.Fprintf(stderr, "unionbench: charts: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "unionbench: wrote %s\n", strings.Join(append(files, charts...), ", "))
	return 0
}

// insideFlag marks the harness run in a user namespace by its parent.
const insideFlag = "--inside-userns"

func unionWorkloads(chosen []bench.Workload) []string {
	var names []string
	for _, w := range chosen {
		if w.Family == bench.Union && !w.InitialNamespaceOnly {
			names = append(names, w.Name)
		}
	}
	return names
}

// rootlessRows measures the union workloads in a user namespace; where
// that cannot be done, the rows say why.
func rootlessRows(cfg *bench.Config, workloads []string, stderr io.Writer) []bench.Row {
	self, err := os.Executable()
	var rows []bench.Row
	if err == nil {
		rows, err = bench.RunInUserNamespace(cfg, self, insideFlag, workloads, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "unionbench: user namespace: %v\n", err)
		rows = nil
		for _, t := range bench.RootlessTargets {
			for _, w := range workloads {
				rows = append(rows, bench.Row{Family: bench.Rootless, Target: t, Workload: w, Skipped: err.Error()})
			}
		}
	}
	return rows
}

func compare(args []string, stdout, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "usage: unionbench compare OLD.json NEW.json")
		return 2
	}
	old, err := bench.ReadJSON(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "unionbench compare: %v\n", err)
		return 2
	}
	cur, err := bench.ReadJSON(args[1])
	if err != nil {
		fmt.Fprintf(stderr, "unionbench compare: %v\n", err)
		return 2
	}
	bench.Compare(stdout, old, cur)
	return 0
}

func selectTargets(all []bench.Target, list string, stderr io.Writer) []bench.Target {
	if list == "" {
		return all
	}
	var out []bench.Target
	for _, name := range strings.Split(list, ",") {
		found := false
		for _, t := range all {
			if t.Name() == strings.TrimSpace(name) {
				out, found = append(out, t), true
			}
		}
		if !found {
			fmt.Fprintf(stderr, "unionbench: unknown target %q (see --list); running the others\n", name)
		}
	}
	return withReferences(all, out)
}

// exactTargets keeps the targets named in list, without references.
func exactTargets(chosen []bench.Target, list string) []bench.Target {
	var out []bench.Target
	for _, t := range chosen {
		for _, name := range strings.Split(list, ",") {
			if t.Name() == strings.TrimSpace(name) {
				out = append(out, t)
			}
		}
	}
	return out
}

// withReferences adds each chosen family's reference target, without
// which no ratio can be given.
func withReferences(all, chosen []bench.Target) []bench.Target {
	for _, f := range []bench.Family{bench.Union, bench.Container, bench.Block, bench.LivePool} {
		used, hasRef := false, false
		for _, t := range chosen {
			if t.Family() == f {
				used = true
				hasRef = hasRef || t.Name() == f.Reference()
			}
		}
		if used && !hasRef {
			for _, t := range all {
				if t.Name() == f.Reference() {
					chosen = append([]bench.Target{t}, chosen...)
				}
			}
		}
	}
	return chosen
}

func selectWorkloads(all []bench.Workload, list string, stderr io.Writer) []bench.Workload {
	if list == "" {
		return all
	}
	var out []bench.Workload
	// A workload named twice (by its name and by a prefix of it) runs
	// once: twice would give two rows of one key.
	chosen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, w := range all {
			if w.Name == name || strings.HasPrefix(w.Name, name) {
				found = true
				if !chosen[w.Name] {
					chosen[w.Name] = true
					out = append(out, w)
				}
			}
		}
		if !found {
			fmt.Fprintf(stderr, "unionbench: unknown workload %q (see --list); running the others\n", name)
		}
	}
	return out
}

// findBinary picks a binary: as given, beside this executable, or on
// the PATH; "" if none.
func findBinary(given, name string) string {
	if given != "" {
		if abs, err := filepath.Abs(given); err == nil {
			return abs
		}
		return given
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// findPassthroughHP finds libfuse's passthrough_hp: the one given, the
// one the build script made, or one on PATH (a build without io_uring
// fails the floor target's setup with a message saying so).
func findPassthroughHP(given string) string {
	if given == "" {
		if _, err := os.Stat(bench.DefaultPassthroughHP); err == nil {
			return bench.DefaultPassthroughHP
		}
	}
	return findBinary(given, "passthrough_hp")
}

func haveFio() bool {
	_, err := exec.LookPath("fio")
	return err == nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
