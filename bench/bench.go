// Package bench is unionbench's harness: targets (this project's
// programs and their peers, each with set-up, tear-down and a reason to
// skip), workloads (fio job files, metadata and copy-up runs, snapshot
// creation), the runner, and the reports (Markdown, JSON, charts).
//
// It drives binaries, never internals, so that this project and its
// peers are measured the same way.
package bench

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Family groups targets measured against one reference.
type Family string

const (
	Union Family = "union"
	// Rootless is the union workloads run without privilege: as root of
	// a user namespace whose ids are shifted host ids (see userns.go).
	Rootless Family = "union-userns"
	Block    Family = "block"
	// Container is podman running containers, its storage on each union.
	Container Family = "container"
	// LivePool is a served pool's volumes snapshotted, started, deleted
	// and discarded while in use, against qcow2 served by QEMU.
	LivePool Family = "live-pool"
)

// Reference is the target each family's ratios are relative to.
func (f Family) Reference() string {
	switch f {
	case Union:
		return "kernel-overlay"
	case Rootless:
		return "fuse-overlayfs"
	case Container:
		return "podman-kernel-overlay"
	case LivePool:
		return LivePoolReference
	}
	return "raw-file"
}

// Config sets what a run measures and where.
type Config struct {
	Quick         bool
	Repeat        int
	Dir           string // scratch space, removed afterwards
	UnionmountBin string
	ThinblockBin  string
	// PassthroughHPBin is libfuse's passthrough_hp built with io_uring,
	// or "" (then the floor target is skipped).
	PassthroughHPBin string
	// TurnOnURing lets the run switch FUSE-over-io_uring on (as root)
	// for the io_uring target, and back off at its end.
	TurnOnURing bool
	// Progress, if set, gets one line per step.
	Progress func(line string)
}

// sizes are the workload sizes of a run.
type sizes struct {
	bigFile    int64 // the lower file read, and copied up
	files      int   // metadata workloads
	chmodFiles int
	fioSize    string
	fioRuntime time.Duration
	blockSize  string // block targets' volume size
	blockBytes int64
	snapSizes  []string // mapped sizes for the snapshot workloads
	dpkgFiles  int      // files in the package the container-dpkg workload installs
	// liveRuntime is how long fio writes while the volume is snapshotted.
	liveRuntime time.Duration
}

func (c *Config) sizes() sizes {
	if c.Quick {
		return sizes{bigFile: 16 << 20, files: 500, chmodFiles: 200, fioSize: "16M", fioRuntime: time.Second,
			blockSize: "64M", snapSizes: []string{"64M", "1G"}, dpkgFiles: 500, liveRuntime: 2 * time.Second}
	}
	return sizes{bigFile: 1 << 30, files: 20000, chmodFiles: 10000, fioSize: "1G", fioRuntime: 2 * time.Second,
		blockSize: "1G", snapSizes: []string{"1G", "16G"}, dpkgFiles: 5000, liveRuntime: 10 * time.Second}
}

// runCmd runs a command and returns its combined output, or an error
// naming it and carrying its output.
func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(lastLines(string(out), 3)))
	}
	return string(out), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// have reports whether a command is installed.
func have(name string) bool {
	_, err := exec.LookPath(name)
	if err == nil {
		return true
	}
	for _, dir := range []string{"/sbin", "/usr/sbin"} {
		if st, err := os.Stat(dir + "/" + name); err == nil && !st.IsDir() {
			return true
		}
	}
	return false
}

func isRoot() bool { return os.Geteuid() == 0 }

// AllTargets are every family's targets, each family's reference first.
func AllTargets() []Target {
	return append(append(append(UnionTargets(), ContainerTargets()...), BlockTargets()...), LivePoolTargets()...)
}

// AllWorkloads are every family's workloads.
func AllWorkloads(cfg *Config) []Workload {
	return append(append(append(append(append(append(append(UnionWorkloads(), PageCacheWorkloads()...), ProcessStartWorkloads()...), DaemonMemoryWorkloads()...), ContainerWorkloads()...), BlockWorkloads()...),
		SnapshotWorkloads(cfg)...), LivePoolWorkloads()...)
}
