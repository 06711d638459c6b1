package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Instance is a set-up target ready for a workload.
type Instance struct {
	// Dir is the merged directory (union targets).
	Dir string
	// URI is an NBD URI, or File a file, for block targets.
	URI, File string
	// Snapshot, for block targets that have snapshots, snapshots the
	// volume; later writes go to the origin, which shares its blocks
	// with the snapshot (or, for qcow2, to an overlay over the image).
	Snapshot func() error
	// provisioned is set once a block volume was written whole.
	provisioned bool
	thin        bool // served by thinblock
	// metaDirs are directories of files the create workload made, for
	// stat, readdir and unlink to use.
	metaDirs []string
	// podman is the podman command line, debs the directory of .debs
	// the dpkg workload installs, for container targets.
	podman []string
	debs   string
	// live is a live-pool target's server, liveName the target's name
	// (the key of the figures its workloads share), baseReady set once
	// the base image volumes start from is written.
	live      liveVolumes
	liveName  string
	baseReady bool
	// mountOver mounts another union of the same target over a lower
	// layer (union targets, not the plain directory).
	mountOver func(lower string) (dir string, unmount func() error, err error)
	teardown  func() error
}

// Close tears the instance down.
func (i *Instance) Close() error {
	if i.teardown == nil {
		return nil
	}
	return i.teardown()
}

// Target is one thing measured.
type Target interface {
	Name() string
	Family() Family
	// Skip says why the target cannot run here, or "".
	Skip(cfg *Config) string
	Setup(env *Env) (*Instance, error)
}

// unionTarget mounts a union over the prepared lower layer.
type unionTarget struct {
	name  string
	skip  func(cfg *Config) string
	mount func(env *Env, lower, upper, work, mnt string) error
	fuse  bool
	plain bool // mount copies instead of mounting
}

func (t *unionTarget) Name() string            { return t.name }
func (t *unionTarget) Family() Family          { return Union }
func (t *unionTarget) Skip(cfg *Config) string { return t.skip(cfg) }

func (t *unionTarget) Setup(env *Env) (*Instance, error) {
	mnt, teardown, err := t.mountOne(env, env.lower)
	if err != nil {
		return nil, err
	}
	inst := &Instance{Dir: mnt, teardown: teardown}
	if !t.plain {
		inst.mountOver = func(lower string) (string, func() error, error) { return t.mountOne(env, lower) }
	}
	return inst, nil
}

// mountOne mounts a union over lower with an upper and work directory
// of its own.
func (t *unionTarget) mountOne(env *Env, lower string) (string, func() error, error) {
	base, err := os.MkdirTemp(env.cfg.Dir, t.name+"-")
	if err != nil {
		return "", nil, err
	}
	upper, work, mnt := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{upper, work, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", nil, err
		}
	}
	if err := t.mount(env, lower, upper, work, mnt); err != nil {
		os.RemoveAll(base)
		return "", nil, fmt.Errorf("mount %s: %w", t.name, err)
	}
	return mnt, func() error {
		var err error
		if !t.plain {
			err = unmount(mnt, t.fuse)
		}
		if rerr := os.RemoveAll(base); err == nil {
			err = rerr
		}
		return err
	}, nil
}

// unmount unmounts dir, retrying while busy.
func unmount(dir string, fuse bool) error {
	var err error
	for deadline := time.Now().Add(daemonPatience); time.Now().Before(deadline); {
		if fuse && !isRoot() {
			_, err = runCmd("fusermount3", "-u", dir)
		} else {
			err = unix.Unmount(dir, 0)
		}
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	unix.Unmount(dir, unix.MNT_DETACH)
	return fmt.Errorf("unmount %s: %w", dir, err)
}

func needRootAndFuse(cfg *Config) string {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "no /dev/fuse"
	}
	return ""
}

func needBinary(name, pkg string) func(cfg *Config) string {
	return func(cfg *Config) string {
		if !have(name) {
			return fmt.Sprintf("%s not installed (Debian package %s)", name, pkg)
		}
		return needRootAndFuse(cfg)
	}
}

// UnionTargets are the union filesystems measured, the reference first.
func UnionTargets() []Target {
	overlayOpts := func(lower, upper, work string) string {
		return "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	}
	unionmount := func(name string, extra ...string) *unionTarget {
		return &unionTarget{name: name, fuse: true,
			skip: func(cfg *Config) string {
				if cfg.UnionmountBin == "" {
					return "no unionmount binary given"
				}
				if name == "unionmount-uring" {
					return uringSkip(cfg)
				}
				if name == "unionmount-passthrough" {
					if !isRoot() {
						return "passthrough needs root"
					}
					if !kernelAtLeast(6, 9) {
						return "kernel lacks FUSE passthrough (Linux 6.9 or later)"
					}
				}
				return needRootAndFuse(cfg)
			},
			mount: func(env *Env, lower, upper, work, mnt string) error {
				opts := append([]string{overlayOpts(lower, upper, work)}, extra...)
				if _, err := runCmd(env.cfg.UnionmountBin, "-o", strings.Join(opts, ","), mnt); err != nil {
					return err
				}
				for _, o := range extra {
					if want, ok := strings.CutPrefix(o, "transport="); ok {
						return checkTransport(env.cfg.UnionmountBin, mnt, want)
					}
				}
				return nil
			}}
	}
	return []Target{
		&unionTarget{name: "kernel-overlay",
			skip: func(cfg *Config) string {
				if !isRoot() {
					return "mounting kernel overlay needs root"
				}
				if data, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(data), "overlay") {
					return "kernel has no overlay filesystem"
				}
				return ""
			},
			mount: func(env *Env, lower, upper, work, mnt string) error {
				return unix.Mount("overlay", mnt, "overlay", 0, overlayOpts(lower, upper, work)+",metacopy=off,redirect_dir=on")
			}},
		&unionTarget{name: "plain-dir", plain: true, skip: func(*Config) string { return "" },
			mount: func(env *Env, lower, upper, work, mnt string) error {
				// The floor: a private copy of the lower layer, no union.
				_, err := runCmd("cp", "-a", "--reflink=auto", lower+"/.", mnt)
				return err
			}},
		// Metadata-only copy-up on: kernel overlay runs with its default
		// (metacopy=off), which is what the copy-up rows compare with.
		// The transport is named, so turning io_uring on for the
		// io_uring target leaves the others on the /dev/fuse loop.
		unionmount("unionmount-passthrough", "metacopy=on", "transport=dev-fuse"),
		unionmount("unionmount", "passthrough=off", "metacopy=on", "transport=dev-fuse"),
		unionmount("unionmount-uring", "passthrough=off", "metacopy=on", "transport=io_uring"),
		floorTarget{},
		&unionTarget{name: "fuse-overlayfs", fuse: true, skip: needBinary("fuse-overlayfs", "fuse-overlayfs"),
			mount: func(env *Env, lower, upper, work, mnt string) error {
				_, err := runCmd("fuse-overlayfs", "-o", overlayOpts(lower, upper, work), mnt)
				return err
			}},
		&unionTarget{name: "unionfs-fuse", fuse: true, skip: needBinary("unionfs-fuse", "unionfs-fuse"),
			mount: func(env *Env, lower, upper, work, mnt string) error {
				args := []string{"-o", "cow", upper + "=RW:" + lower + "=RO", mnt}
				if isRoot() {
					args = append([]string{"-o", "allow_other"}, args...)
				}
				_, err := runCmd("unionfs-fuse", args...)
				return err
			}},
	}
}

// kernelAtLeast reports whether the running kernel is at least
// major.minor.
func kernelAtLeast(major, minor int) bool {
	var uts unix.Utsname
	if unix.Uname(&uts) != nil {
		return false
	}
	var ma, mi int
	fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &ma, &mi)
	return ma > major || (ma == major && mi >= minor)
}
