package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/unionmount/unionmount/internal/baseimage"
)

// startProgram is the dynamically linked program the process-start row
// runs: each start maps the loader, libc and the program's other
// libraries from the union.
var startProgram = []string{"/usr/bin/ls", "/"}

// ProcessStartWorkloads measure what a container pays to start
// programs: a union over a Debian root filesystem, and a dynamically
// linked program started again and again inside it.
func ProcessStartWorkloads() []Workload {
	return []Workload{{Name: "process-start", Family: Union, InitialNamespaceOnly: true,
		NotFor: func(t Target, inst *Instance) string {
			if inst != nil && inst.mountOver == nil {
				return "not a union"
			}
			if !isRoot() {
				return "needs root (chroot, and the Debian image is built as root)"
			}
			if _, err := baseimage.Tarball(baseimage.DefaultCacheDir); err != nil {
				return err.Error()
			}
			return ""
		},
		Run: processStarts}}
}

// processStarts mounts the target over the Debian root filesystem and
// reports program starts per second in it (chroot, then exec), after a
// few starts that fill the caches.
func processStarts(e *Env, inst *Instance) (Result, error) {
	root, err := e.debianRoot()
	if err != nil {
		return Result{}, err
	}
	mnt, unmount, err := inst.mountOver(root)
	if err != nil {
		return Result{}, err
	}
	defer unmount()
	start := func() error {
		cmd := exec.Command("chroot", append([]string{mnt}, startProgram...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("chroot %s %v: %v: %s", mnt, startProgram, err, lastLines(string(out), 3))
		}
		return nil
	}
	for i := 0; i < 5; i++ {
		if err := start(); err != nil {
			return Result{}, err
		}
	}
	n := 200
	if e.cfg.Quick {
		n = 20
	}
	return rate(n, "starts/s", func() error {
		for i := 0; i < n; i++ {
			if err := start(); err != nil {
				return err
			}
		}
		return nil
	})
}

// debianRoot unpacks the Debian base image once per run.
func (e *Env) debianRoot() (string, error) {
	if e.rootfs != "" || e.rootfsErr != nil {
		return e.rootfs, e.rootfsErr
	}
	e.rootfsErr = func() error {
		tarball, err := baseimage.Tarball(baseimage.DefaultCacheDir)
		if err != nil {
			return err
		}
		dir := filepath.Join(e.cfg.Dir, "debian-rootfs")
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		start := time.Now()
		if _, err := runCmd("tar", "-xpf", tarball, "-C", dir, "--numeric-owner"); err != nil {
			return err
		}
		if e.cfg.Progress != nil {
			e.cfg.Progress(fmt.Sprintf("unpacked the Debian root filesystem in %.1fs", time.Since(start).Seconds()))
		}
		e.rootfs = dir
		return nil
	}()
	return e.rootfs, e.rootfsErr
}
