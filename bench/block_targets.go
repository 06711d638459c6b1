package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// blockTarget serves one volume for fio.
type blockTarget struct {
	name  string
	skip  func(cfg *Config) string
	setup func(env *Env, dir string) (*Instance, error)
}

func (t *blockTarget) Name() string            { return t.name }
func (t *blockTarget) Family() Family          { return Block }
func (t *blockTarget) Skip(cfg *Config) string { return t.skip(cfg) }

func (t *blockTarget) Setup(env *Env) (*Instance, error) {
	dir, err := os.MkdirTemp(env.cfg.Dir, t.name+"-")
	if err != nil {
		return nil, err
	}
	inst, err := t.setup(env, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	inner := inst.teardown
	inst.teardown = func() error {
		var err error
		if inner != nil {
			err = inner()
		}
		if rerr := os.RemoveAll(dir); err == nil {
			err = rerr
		}
		return err
	}
	return inst, nil
}

// daemonPatience bounds the waits on a daemon starting or a mount
// becoming free. The quick run is part of `go test ./...`, where it shares
// two cores with the other packages' FUSE daemons, podman and qemu: a
// server that starts in 50 ms on a quiet machine may take seconds there,
// and a bound of a few seconds failed our own targets.
const daemonPatience = 60 * time.Second

// daemon is a server process serving a unix socket.
type daemon struct {
	cmd  *exec.Cmd
	sock string
}

func startDaemon(sock string, name string, args ...string) (*daemon, error) {
	os.Remove(sock)
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(daemonPatience); time.Now().Before(deadline); {
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			return &daemon{cmd: cmd, sock: sock}, nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, fmt.Errorf("%s did not open %s: %s", name, sock, lastLines(stderr.String(), 3))
}

func (d *daemon) stop() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not stop on SIGTERM", d.cmd.Path)
	}
}

func nbdURI(sock, export string) string {
	return "nbd+unix:///" + export + "?socket=" + sock
}

func needTools(tools ...string) func(cfg *Config) string {
	return func(cfg *Config) string {
		for _, t := range tools {
			if !have(t) {
				return t + " not installed"
			}
		}
		return ""
	}
}

// BlockTargets are the block devices measured, the reference first.
func BlockTargets() []Target {
	return []Target{
		&blockTarget{name: "raw-file", skip: func(*Config) string { return "" },
			setup: func(env *Env, dir string) (*Instance, error) {
				f := filepath.Join(dir, "raw.img")
				if err := os.WriteFile(f, nil, 0o600); err != nil {
					return nil, err
				}
				return &Instance{File: f}, os.Truncate(f, env.size.blockBytes)
			}},
		&blockTarget{name: "thinblock", skip: func(cfg *Config) string {
			if cfg.ThinblockBin == "" {
				return "no thinblock binary given"
			}
			return ""
		}, setup: setupThinblock},
		&transportTarget{name: "thinblock-tcp"},
		&transportTarget{name: "thinblock-tls", tls: true},
		&blockTarget{name: "qemu-nbd-qcow2", skip: needTools("qemu-img", "qemu-nbd"),
			setup: func(env *Env, dir string) (*Instance, error) {
				img := filepath.Join(dir, "image.qcow2")
				if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", img, env.size.blockSize); err != nil {
					return nil, err
				}
				return serveQcow2(dir, img)
			}},
		&blockTarget{name: "qemu-nbd-overlay", skip: needTools("qemu-img", "qemu-nbd", "fio"),
			setup: func(env *Env, dir string) (*Instance, error) {
				// The snapshot case: an empty overlay over a full image.
				base := filepath.Join(dir, "base.qcow2")
				if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", base, env.size.blockSize); err != nil {
					return nil, err
				}
				if _, err := runCmd("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 "+env.size.blockSize, base); err != nil {
					return nil, err
				}
				over := filepath.Join(dir, "overlay.qcow2")
				if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "-b", base, "-F", "qcow2", over); err != nil {
					return nil, err
				}
				return serveQcow2(dir, over)
			}},
		&blockTarget{name: "nbdkit-file", skip: needTools("nbdkit"),
			setup: func(env *Env, dir string) (*Instance, error) {
				f := filepath.Join(dir, "raw.img")
				if err := os.WriteFile(f, nil, 0o600); err != nil {
					return nil, err
				}
				if err := os.Truncate(f, env.size.blockBytes); err != nil {
					return nil, err
				}
				sock := filepath.Join(dir, "nbdkit.sock")
				d, err := startDaemon(sock, "nbdkit", "--foreground", "--unix", sock, "file", "file="+f)
				if err != nil {
					return nil, err
				}
				return &Instance{URI: nbdURI(sock, ""), teardown: d.stop}, nil
			}},
		&blockTarget{name: "dm-thin", skip: func(*Config) string {
			if _, err := os.Stat("/dev/mapper/control"); err != nil {
				return "kernel has no device-mapper (no /dev/mapper/control)"
			}
			if !have("dmsetup") {
				return "dmsetup not installed (Debian package dmsetup)"
			}
			if !isRoot() {
				return "dm-thin needs root"
			}
			return ""
		}, setup: setupDMThin},
	}
}

func serveQcow2(dir, img string) (*Instance, error) {
	sock := filepath.Join(dir, "qemu.sock")
	d, err := startDaemon(sock, "qemu-nbd", "--cache=none", "--format=qcow2", "--socket="+sock, "--persistent", "--shared=16", img)
	if err != nil {
		return nil, err
	}
	inst := &Instance{URI: nbdURI(sock, ""), teardown: func() error { return d.stop() }}
	inst.Snapshot = func() error {
		// qcow2's snapshot for a running disk: an overlay over it.
		if err := d.stop(); err != nil {
			return err
		}
		over := filepath.Join(dir, fmt.Sprintf("snap-%d.qcow2", time.Now().UnixNano()))
		if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "-b", img, "-F", "qcow2", over); err != nil {
			return err
		}
		nd, err := startDaemon(sock, "qemu-nbd", "--cache=none", "--format=qcow2", "--socket="+sock, "--persistent", "--shared=16", over)
		if err != nil {
			return err
		}
		d = nd
		return nil
	}
	return inst, nil
}

func setupThinblock(env *Env, dir string) (*Instance, error) {
	bin := env.cfg.ThinblockBin
	pool := filepath.Join(dir, "pool")
	poolSize := fmt.Sprint(4 * env.size.blockBytes)
	if _, err := runCmd(bin, "pool", "create", "--pool", pool, "--size", poolSize); err != nil {
		return nil, err
	}
	if _, err := runCmd(bin, "create", "--pool", pool, "1", "--size", env.size.blockSize); err != nil {
		return nil, err
	}
	sock := filepath.Join(pool, "nbd.sock")
	serve := func() (*daemon, error) {
		return startDaemon(sock, bin, "serve", "nbd", "--pool", pool, "--writable-snapshots")
	}
	d, err := serve()
	if err != nil {
		return nil, err
	}
	snaps := 0
	inst := &Instance{URI: nbdURI(sock, "1"), thin: true, teardown: func() error { return d.stop() }}
	inst.Snapshot = func() error {
		if err := d.stop(); err != nil {
			return err
		}
		snaps++
		if _, err := runCmd(bin, "snapshot", "--pool", pool, fmt.Sprint(100+snaps), "1"); err != nil {
			return err
		}
		nd, err := serve()
		if err != nil {
			return err
		}
		d = nd
		return nil
	}
	return inst, nil
}

// setupDMThin builds a dm-thin pool on loop devices and one thin volume;
// it runs only where the kernel has device-mapper.
func setupDMThin(env *Env, dir string) (*Instance, error) {
	meta, data := filepath.Join(dir, "meta.img"), filepath.Join(dir, "data.img")
	for f, size := range map[string]int64{meta: 64 << 20, data: 4 * env.size.blockBytes} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return nil, err
		}
		if err := os.Truncate(f, size); err != nil {
			return nil, err
		}
	}
	loop := func(f string) (string, error) {
		out, err := runCmd("losetup", "--find", "--show", f)
		return strings.TrimSpace(out), err
	}
	mdev, err := loop(meta)
	if err != nil {
		return nil, err
	}
	ddev, err := loop(data)
	if err != nil {
		runCmd("losetup", "-d", mdev)
		return nil, err
	}
	name := filepath.Base(dir)
	sectors := 4 * env.size.blockBytes / 512
	cleanup := func() error {
		runCmd("dmsetup", "remove", name+"-thin")
		runCmd("dmsetup", "remove", name+"-pool")
		runCmd("losetup", "-d", ddev)
		_, err := runCmd("losetup", "-d", mdev)
		return err
	}
	steps := [][]string{
		{"dmsetup", "create", name + "-pool", "--table", fmt.Sprintf("0 %d thin-pool %s %s 128 0", sectors, mdev, ddev)},
		{"dmsetup", "message", "/dev/mapper/" + name + "-pool", "0", "create_thin 1"},
		{"dmsetup", "create", name + "-thin", "--table", fmt.Sprintf("0 %d thin /dev/mapper/%s-pool 1", env.size.blockBytes/512, name)},
	}
	for _, s := range steps {
		if _, err := runCmd(s[0], s[1:]...); err != nil {
			cleanup()
			return nil, err
		}
	}
	return &Instance{File: "/dev/mapper/" + name + "-thin", teardown: cleanup}, nil
}
