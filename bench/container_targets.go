package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/baseimage"
)

// containerTarget is podman with overlay storage of its own, mounted by
// kernel overlay or by a mount_program, holding the Debian base image.
type containerTarget struct {
	name string
	// program returns the mount_program ("" for kernel overlay) or why
	// there is none.
	program func(cfg *Config) (string, string)
}

func (t *containerTarget) Name() string   { return t.name }
func (t *containerTarget) Family() Family { return Container }

func (t *containerTarget) Skip(cfg *Config) string {
	if !isRoot() {
		return "podman with a storage root of its own runs as root here"
	}
	for _, tool := range []string{"podman", "runc"} {
		if !have(tool) {
			return fmt.Sprintf("%s not installed (Debian package %s)", tool, tool)
		}
	}
	if _, why := t.program(cfg); why != "" {
		return why
	}
	if _, err := baseimage.Tarball(baseimage.DefaultCacheDir); err != nil {
		return err.Error()
	}
	return ""
}

// containerImage is the base image's name in every target's storage.
const containerImage = "localhost/unionbench-base"

func (t *containerTarget) Setup(env *Env) (*Instance, error) {
	program, why := t.program(env.cfg)
	if why != "" {
		return nil, errors.New(why)
	}
	tarball, err := baseimage.Tarball(baseimage.DefaultCacheDir)
	if err != nil {
		return nil, err
	}
	// Not under cfg.Dir: podman refuses a run root longer than 50 bytes.
	dir, err := os.MkdirTemp("", "ubp-")
	if err != nil {
		return nil, err
	}
	podman := []string{"podman", "--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
		"--storage-driver", "overlay", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"}
	if program != "" {
		podman = append(podman, "--storage-opt", "overlay.mount_program="+program)
	}
	inst := &Instance{podman: podman, debs: filepath.Join(dir, "debs")}
	inst.teardown = func() error {
		runCmd(podman[0], append(podman[1:], "rm", "--all", "--force")...)
		for _, m := range mountsUnder(dir) {
			unix.Unmount(m, unix.MNT_DETACH)
		}
		return os.RemoveAll(dir)
	}
	fail := func(err error) (*Instance, error) {
		inst.teardown()
		return nil, err
	}
	if _, err := runCmd(podman[0], append(podman[1:], "import", "--quiet", tarball, containerImage)...); err != nil {
		return fail(err)
	}
	// The first container of a storage root pays one-time set-up (podman's
	// database, c/storage's feature checks): not what is measured.
	if _, err := inst.runPodman(append(containerRunArgs(), containerImage, "true")...); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(inst.debs, 0o755); err != nil {
		return fail(err)
	}
	files := map[string]string{}
	for i := 0; i < env.size.dpkgFiles; i++ {
		files[fmt.Sprintf("/usr/share/unionbench/d%02d/f%05d", i%50, i)] = strings.Repeat("unionbench\n", 100)
	}
	if _, err := baseimage.BuildDeb(inst.debs, baseimage.Package{Name: "unionbench-files", Version: "1", Files: files}); err != nil {
		return fail(err)
	}
	return inst, nil
}

// podman runs the instance's podman with args.
func (i *Instance) runPodman(args ...string) (string, error) {
	return runCmd(i.podman[0], append(i.podman[1:], args...)...)
}

// containerRunArgs: no network, and limits no higher than this
// process's (runc cannot raise them without CAP_SYS_RESOURCE).
func containerRunArgs() []string {
	args := []string{"run", "--rm", "--net=none"}
	for _, l := range []struct {
		name     string
		resource int
	}{{"nofile", unix.RLIMIT_NOFILE}, {"nproc", unix.RLIMIT_NPROC}} {
		var r unix.Rlimit
		if unix.Getrlimit(l.resource, &r) == nil {
			n := min(r.Cur, 1024)
			args = append(args, fmt.Sprintf("--ulimit=%s=%d:%d", l.name, n, n))
		}
	}
	return args
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append([]string{f[4]}, out...)
		}
	}
	return out
}

// ContainerTargets are podman's storage set-ups measured, the reference
// (podman's own kernel overlay driver) first.
func ContainerTargets() []Target {
	return []Target{
		&containerTarget{name: "podman-kernel-overlay", program: func(*Config) (string, string) {
			if data, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(data), "overlay") {
				return "", "kernel has no overlay filesystem"
			}
			return "", ""
		}},
		&containerTarget{name: "podman-fuse-overlayfs", program: func(*Config) (string, string) {
			p, err := exec.LookPath("fuse-overlayfs")
			if err != nil {
				return "", "fuse-overlayfs not installed (Debian package fuse-overlayfs)"
			}
			return p, needRootAndFuse(nil)
		}},
		&containerTarget{name: "podman-unionmount", program: func(cfg *Config) (string, string) {
			if cfg.UnionmountBin == "" {
				return "", "no unionmount binary given"
			}
			return cfg.UnionmountBin, needRootAndFuse(cfg)
		}},
	}
}

// ContainerWorkloads are the container family's workloads: starting a
// container, and dpkg installing and purging a package of many small
// files in one.
func ContainerWorkloads() []Workload {
	return []Workload{
		{Name: "container-start", Family: Container, Run: func(e *Env, inst *Instance) (Result, error) {
			return timed(func() error {
				_, err := inst.runPodman(append(containerRunArgs(), containerImage, "true")...)
				return err
			})
		}},
		{Name: "container-dpkg", Family: Container, Run: func(e *Env, inst *Instance) (Result, error) {
			start := time.Now()
			out, err := inst.runPodman(append(containerRunArgs(), "--volume", inst.debs+":/debs:ro", containerImage, "sh", "-c",
				"dpkg -i /debs/unionbench-files_1_all.deb >/dev/null && ls /usr/share/unionbench | wc -l && dpkg --purge unionbench-files >/dev/null")...)
			if err != nil {
				return Result{}, err
			}
			if strings.TrimSpace(out) != "50" {
				return Result{}, fmt.Errorf("the package's 50 directories were not installed: %q", out)
			}
			return Result{time.Since(start).Seconds(), "s", false}, nil
		}},
	}
}
