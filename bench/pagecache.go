package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// memCgroupRoot is cgroup v1's memory controller, whose memory.stat
// counts the page cache a group's tasks brought in.
const memCgroupRoot = "/sys/fs/cgroup/memory"

// PageCacheWorkloads measure density: how many copies of one lower file
// the page cache holds when several containers' unions read it.
func PageCacheWorkloads() []Workload {
	return []Workload{{Name: "pagecache-copies", Family: Union, Fresh: true, InitialNamespaceOnly: true,
		NotFor: func(t Target, inst *Instance) string {
			if inst != nil && inst.mountOver == nil {
				return "not a union: nothing is shared"
			}
			if !isRoot() {
				return "needs root (a memory cgroup, dropping the page cache)"
			}
			if _, err := os.Stat(filepath.Join(memCgroupRoot, "memory.stat")); err != nil {
				return "needs cgroup v1's memory controller at " + memCgroupRoot
			}
			return ""
		},
		Run: pageCacheCopies}}
}

// pageCacheCopies mounts n unions of the target over the lower layer,
// reads its big file twice through each, and reports the page cache
// the daemons and readers hold, in copies of the file. The page cache is
// dropped first, so pages cached before do not hide in another group.
func pageCacheCopies(e *Env, inst *Instance) (Result, error) {
	n := 6
	if e.cfg.Quick {
		n = 3
	}
	cg, err := newMemCgroup()
	if err != nil {
		return Result{}, err
	}
	defer cg.remove()
	if err := dropPageCache(); err != nil {
		return Result{}, err
	}
	leave, err := cg.enter()
	if err != nil {
		return Result{}, err
	}
	// The daemons the mounts start are born in the group.
	var unmounts []func() error
	defer func() {
		for _, u := range unmounts {
			u()
		}
		dropPageCache()
	}()
	var dirs []string
	for i := 0; i < n && err == nil; i++ {
		var dir string
		var unmount func() error
		if dir, unmount, err = inst.mountOver(e.lower); err == nil {
			dirs, unmounts = append(dirs, dir), append(unmounts, unmount)
		}
	}
	for round := 0; round < 2 && err == nil; round++ {
		for _, d := range dirs {
			if err = readWhole(filepath.Join(d, "big")); err != nil {
				break
			}
		}
	}
	var cached int64
	if err == nil {
		cached, err = cg.stat("cache")
	}
	if lerr := leave(); err == nil {
		err = lerr
	}
	if err != nil {
		return Result{}, err
	}
	return Result{float64(cached) / float64(e.size.bigFile), "copies", false}, nil
}

func readWhole(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
	return err
}

func dropPageCache() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("drop the page cache: %w", err)
	}
	return nil
}

// memCgroup is a memory cgroup made for one measurement.
type memCgroup struct{ dir string }

func newMemCgroup() (*memCgroup, error) {
	dir := filepath.Join(memCgroupRoot, fmt.Sprintf("unionbench-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make a memory cgroup: %w", err)
	}
	return &memCgroup{dir}, nil
}

// enter moves this process (every thread) into the group; leave moves
// it back to the group it was in.
func (c *memCgroup) enter() (leave func() error, err error) {
	old, err := currentMemCgroup()
	if err != nil {
		return nil, err
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), pid, 0); err != nil {
		return nil, fmt.Errorf("enter %s: %w", c.dir, err)
	}
	return func() error {
		if err := os.WriteFile(filepath.Join(memCgroupRoot, old, "cgroup.procs"), pid, 0); err != nil {
			return fmt.Errorf("leave %s: %w", c.dir, err)
		}
		return nil
	}, nil
}

// currentMemCgroup is this process's memory cgroup, relative to the
// controller's root.
func currentMemCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ",memory,") {
			return parts[2], nil
		}
	}
	return "", fmt.Errorf("no memory cgroup in /proc/self/cgroup")
}

// stat reads one figure of the group's memory.stat.
func (c *memCgroup) stat(name string) (int64, error) {
	f, err := os.Open(filepath.Join(c.dir, "memory.stat"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == name {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("%s/memory.stat has no %q", c.dir, name)
}

// remove removes the group once the daemons that were in it are gone.
func (c *memCgroup) remove() {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := os.Remove(c.dir); err == nil || os.IsNotExist(err) || time.Now().After(deadline) {
			return
		}
	}
}
