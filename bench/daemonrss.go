package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DaemonMemoryWorkloads measure what a union's daemon holds after a
// container's worth of reading: find, grep -r and tar over the lower
// layer's source tree through a fresh mount.
func DaemonMemoryWorkloads() []Workload {
	notFor := func(t Target, inst *Instance) string {
		if inst != nil && inst.mountOver == nil {
			return "not a union"
		}
		if inst != nil {
			if _, err := daemonOf(inst.Dir); err != nil {
				return "no daemon: a kernel filesystem"
			}
		}
		return ""
	}
	return []Workload{
		{Name: "daemon-rss", Family: Union, Fresh: true, InitialNamespaceOnly: true, NotFor: notFor,
			Run: func(e *Env, inst *Instance) (Result, error) { return daemonRSS(inst, 0, false) }},
		// A container's union spends most of its life at rest.
		{Name: "daemon-rss-at-rest", Family: Union, Fresh: true, InitialNamespaceOnly: true, NotFor: notFor,
			Run: func(e *Env, inst *Instance) (Result, error) { return daemonRSS(inst, 5*time.Second, false) }},
		// The kernel forgets cached inodes when memory runs short; a
		// daemon that drops its state for them gives the memory back
		// with them. Dropping the dentry and inode caches stands in for
		// that pressure.
		{Name: "daemon-rss-after-reclaim", Family: Union, Fresh: true, InitialNamespaceOnly: true, NotFor: notFor,
			Run: func(e *Env, inst *Instance) (Result, error) { return daemonRSS(inst, 5*time.Second, true) }},
	}
}

// daemonRSS walks, greps and tars the lower tree through the union and
// reports the daemon's resident memory in MiB, rest later; reclaim has
// the kernel drop its dentries and inodes first.
func daemonRSS(inst *Instance, rest time.Duration, reclaim bool) (Result, error) {
	src := filepath.Join(inst.Dir, "src")
	if _, err := runCmd("find", src, "-type", "f"); err != nil {
		return Result{}, err
	}
	err := exec.Command("grep", "-r", "-q", "no such string in any file 7a3f", src).Run()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		return Result{}, fmt.Errorf("grep -r: %w", err)
	}
	if _, err := runCmd("tar", "-cf", "/dev/null", "-C", inst.Dir, "src"); err != nil {
		return Result{}, err
	}
	if reclaim {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
			return Result{}, fmt.Errorf("drop the dentry and inode caches: %w", err)
		}
	}
	time.Sleep(rest)
	pid, err := daemonOf(inst.Dir)
	if err != nil {
		return Result{}, err
	}
	kib, err := residentKiB(pid)
	if err != nil {
		return Result{}, err
	}
	return Result{float64(kib) / 1024, "MiB", false}, nil
}

// daemonOf finds the process serving the FUSE mount at mnt: the one
// whose command line names the mount point (unionmount, fuse-overlayfs
// and unionfs-fuse all take it as an argument).
func daemonOf(mnt string) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	want := []byte(mnt)
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range bytes.Split(cmdline, []byte{0}) {
			if bytes.Equal(arg, want) {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no process names %s on its command line", mnt)
}

// residentKiB reads VmRSS from /proc/PID/status.
func residentKiB(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
}
