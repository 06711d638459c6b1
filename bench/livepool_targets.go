package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// liveTarget is a running server whose volumes are changed while in use.
type liveTarget struct {
	name  string
	skip  func(cfg *Config) string
	setup func(env *Env, dir string) (*Instance, error)
	// notFor names the workloads the target has no counterpart for.
	notFor map[string]string
}

func (t *liveTarget) Name() string            { return t.name }
func (t *liveTarget) Family() Family          { return LivePool }
func (t *liveTarget) Skip(cfg *Config) string { return t.skip(cfg) }
func (t *liveTarget) NotFor(workload string) string {
	return t.notFor[workload]
}

func (t *liveTarget) Setup(env *Env) (*Instance, error) {
	dir, err := os.MkdirTemp(env.cfg.Dir, t.name+"-")
	if err != nil {
		return nil, err
	}
	inst, err := t.setup(env, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	inst.liveName = t.name
	inner := inst.teardown
	inst.teardown = func() error {
		err := inner()
		if rerr := os.RemoveAll(dir); err == nil {
			err = rerr
		}
		return err
	}
	return inst, nil
}

// LivePoolReference is the live-pool family's reference: qcow2 images
// served by QEMU, the other way to give containers or VMs thin,
// snapshotted volumes.
const LivePoolReference = "qcow2-live"

// LivePoolTargets are the live-pool family's targets, the reference first.
func LivePoolTargets() []Target {
	return []Target{
		&liveTarget{name: LivePoolReference, skip: needTools("qemu-storage-daemon", "qemu-img", "qemu-nbd", "qemu-io"),
			setup:  setupQcowLive,
			notFor: map[string]string{figDeleteMiB: liveDeleteReason, figDeleteTime: liveDeleteReason}},
		&liveTarget{name: "thinblock-live", skip: func(cfg *Config) string {
			if cfg.ThinblockBin == "" {
				return "no thinblock binary given"
			}
			return ""
		}, setup: setupThinLive},
	}
}

// thinLive is `thinblock serve nbd` on a pool of its own, with volume 1
// served for writes and volume 2 the base image once prepared.
type thinLive struct {
	pool, sock string
	size       int64
	ctl        *thinControl
	nextID     uint64
}

const (
	thinWrittenID = 1
	thinBaseID    = 2
)

func setupThinLive(env *Env, dir string) (*Instance, error) {
	bin := env.cfg.ThinblockBin
	pool := filepath.Join(dir, "pool")
	// Room for the volume, the base, and the copies the snapshots make:
	// each snapshot taken while fio writes can cost a whole copy of the
	// volume (the pool is sparse: room not written costs nothing).
	snapshots := int64(env.size.liveRuntime/snapshotEvery) + 1
	if _, err := runCmd(bin, "pool", "create", "--pool", pool, "--size", fmt.Sprint((snapshots+4)*env.size.blockBytes)); err != nil {
		return nil, err
	}
	if _, err := runCmd(bin, "create", "--pool", pool, fmt.Sprint(thinWrittenID), "--size", fmt.Sprint(env.size.blockBytes)); err != nil {
		return nil, err
	}
	sock := filepath.Join(pool, "nbd.sock")
	d, err := startDaemon(sock, bin, "serve", "nbd", "--pool", pool)
	if err != nil {
		return nil, err
	}
	ctlPath := filepath.Join(pool, "control.sock")
	if err := waitSocket(ctlPath); err != nil {
		d.stop()
		return nil, err
	}
	ctl, err := dialThinControl(ctlPath)
	if err != nil {
		d.stop()
		return nil, err
	}
	live := &thinLive{pool: pool, sock: sock, size: env.size.blockBytes, ctl: ctl, nextID: 100}
	return &Instance{URI: live.uri(thinWrittenID), thin: true, live: live, teardown: func() error {
		ctl.close()
		return d.stop()
	}}, nil
}

func (t *thinLive) uri(id uint64) string { return nbdURI(t.sock, fmt.Sprint(id)) }

func (t *thinLive) snapshot() error {
	t.nextID++
	return t.ctl.snapshot(t.nextID, thinWrittenID)
}

func (t *thinLive) prepareBase() error {
	if err := t.ctl.create(thinBaseID, uint64(t.size)); err != nil {
		return err
	}
	_, err := runCmd("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %#x 0 %d", basePattern, t.size), t.uri(thinBaseID))
	return err
}

// startFromBase: the server exports a new volume as soon as it exists.
func (t *thinLive) startFromBase() (string, error) {
	t.nextID++
	if err := t.ctl.snapshot(t.nextID, thinBaseID); err != nil {
		return "", err
	}
	return t.uri(t.nextID), nil
}

func (t *thinLive) deleteVolume() error { return t.ctl.delete(thinWrittenID) }

func (t *thinLive) dataFile() string { return filepath.Join(t.pool, "data") }

// qcowLive is qemu-storage-daemon serving a qcow2 image over NBD, with
// its QMP monitor on a unix socket; volumes started from the base image
// are overlays served by qemu-nbd processes of their own.
type qcowLive struct {
	dir  string
	size int64
	qsd  *daemon
	qmp  *qmpClient
	// active is the node the export writes to: the image's, then each
	// snapshot's overlay in turn.
	active string
	n      int
	// nbdPIDs are the qemu-nbd servers of started volumes.
	nbdPIDs []int
	closed  bool
}

func setupQcowLive(env *Env, dir string) (*Instance, error) {
	img := filepath.Join(dir, "disk.qcow2")
	if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", img, fmt.Sprint(env.size.blockBytes)); err != nil {
		return nil, err
	}
	sock, qmpSock := filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "qmp.sock")
	// The monitor comes before the NBD server, so it listens once the
	// NBD socket shows. O_DIRECT as the block family's qemu-nbd
	// (--cache=none); discards go down to the file, as qemu-nbd
	// --discard=unmap would.
	d, err := startDaemon(sock, "qemu-storage-daemon",
		"--chardev", "socket,id=qmp0,path="+qmpSock+",server=on,wait=off",
		"--monitor", "chardev=qmp0",
		"--blockdev", "driver=file,node-name=file0,filename="+img+",cache.direct=on,discard=unmap",
		"--blockdev", "driver=qcow2,node-name=disk,file=file0,discard=unmap",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=exp0,node-name=disk,name=disk,writable=on")
	if err != nil {
		return nil, err
	}
	q, err := dialQMP(qmpSock)
	if err != nil {
		d.stop()
		return nil, err
	}
	live := &qcowLive{dir: dir, size: env.size.blockBytes, qsd: d, qmp: q, active: "disk"}
	return &Instance{URI: nbdURI(sock, "disk"), live: live, teardown: live.close}, nil
}

func (q *qcowLive) snapshot() error {
	q.n++
	node := fmt.Sprintf("snap%d", q.n)
	if err := q.qmp.snapshotSync(q.active, filepath.Join(q.dir, node+".qcow2"), node); err != nil {
		return err
	}
	q.active = node
	return nil
}

func (q *qcowLive) base() string { return filepath.Join(q.dir, "base.qcow2") }

func (q *qcowLive) prepareBase() error {
	if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", q.base(), fmt.Sprint(q.size)); err != nil {
		return err
	}
	_, err := runCmd("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %#x 0 %d", basePattern, q.size), q.base())
	return err
}

// startFromBase: an overlay over the base, and a qemu-nbd for it that
// returns once it serves (--fork).
func (q *qcowLive) startFromBase() (string, error) {
	q.n++
	img := filepath.Join(q.dir, fmt.Sprintf("volume%d.qcow2", q.n))
	if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "-b", q.base(), "-F", "qcow2", img); err != nil {
		return "", err
	}
	sock, pidFile := img+".sock", img+".pid"
	if _, err := runCmd("qemu-nbd", "--fork", "--persistent", "--pid-file="+pidFile, "--cache=none", "--format=qcow2",
		"--socket="+sock, img); err != nil {
		return "", err
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return "", err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", pidFile, err)
	}
	q.nbdPIDs = append(q.nbdPIDs, pid)
	return nbdURI(sock, ""), nil
}

func (q *qcowLive) deleteVolume() error { return errors.New(liveDeleteReason) }

func (q *qcowLive) dataFile() string { return filepath.Join(q.dir, "disk.qcow2") }

// close stops the servers and leaves the images; a second call does
// nothing.
func (q *qcowLive) close() error {
	if q.closed {
		return nil
	}
	q.closed = true
	q.qmp.close()
	err := q.qsd.stop()
	for _, pid := range q.nbdPIDs {
		if kerr := stopForked(pid); err == nil {
			err = kerr
		}
	}
	return err
}

// stopForked stops a server that forked away from us (no child of
// ours to wait for): SIGTERM, then its pid is watched until it is gone.
func stopForked(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
	}
	return fmt.Errorf("qemu-nbd (pid %d) did not stop on SIGTERM", pid)
}

// waitSocket waits for a server's unix socket to show.
func waitSocket(path string) error {
	for i := 0; i < 400; i++ {
		if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no socket at %s", path)
}
