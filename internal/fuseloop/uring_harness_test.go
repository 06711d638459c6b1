package fuseloop

// A small mount for the io_uring transport's tests, until the package's own
// loop can carry it: mount(2) on /dev/fuse, INIT answered by go-fuse's
// ProtocolServer with FUSE_OVER_IO_URING, the rings started, and a plain
// /dev/fuse reader beside them for what the kernel still sends there.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

const (
	uringTestMaxWrite = 128 << 10
	enableURingPath   = "/sys/module/fuse/parameters/enable_uring"

	fuseOpLookup      = 1
	fuseOpForget      = 2
	fuseOpRead        = 15
	fuseOpWrite       = 16
	fuseOpCreate      = 35
	fuseOpInit        = 26
	fuseOpInterrupt   = 36
	fuseOpBatchForget = 42
)

// requireURing skips unless this process can serve FUSE over io_uring, and
// turns the fuse module's enable_uring on for the test's duration.
func requireURing(t testing.TB) {
	t.Helper()
	fstest.RequireFUSE(t)
	old, err := os.ReadFile(enableURingPath)
	if err != nil {
		t.Skipf("needs FUSE over io_uring (kernel 6.14+ with CONFIG_FUSE_IO_URING): %v", err)
	}
	if strings.TrimSpace(string(old)) != "Y" {
		if err := os.WriteFile(enableURingPath, []byte("Y"), 0); err != nil {
			t.Skipf("cannot turn on %s: %v", enableURingPath, err)
		}
		t.Cleanup(func() { _ = os.WriteFile(enableURingPath, old, 0) })
	}
	r, err := newURing(4)
	if err != nil {
		t.Skipf("io_uring is not available here: %v", err)
	}
	r.close()
}

type uringMount struct {
	dir     string // the mount point
	backing string // what the loopback serves
	fd      int
	tr      *URingTransport

	devDone chan struct{} // the /dev/fuse reader saw the connection end
	devMu   sync.Mutex
	devOps  map[uint32]int // opcodes that came through /dev/fuse after INIT; guarded by devMu
	ringOps map[uint32]int // opcodes the rings answered; guarded by devMu

	stopOnce sync.Once
	stopErr  error
}

// mountURing mounts a loopback of a fresh directory served through the
// rings; wrap, if not nil, sits between the kernel and the loopback.
func mountURing(t *testing.T, wrap func(fuse.RawFileSystem) fuse.RawFileSystem) *uringMount {
	t.Helper()
	requireURing(t)
	m, err := startURingMount(t.TempDir(), t.TempDir(), wrap, t.Logf)
	require.NoError(t, err)
	// A server that stops answering must fail the test, not leave this
	// process waiting on its own mount: killed in that state, its threads
	// would stay in D for good.
	stopWatchdog, aborted := fstest.AbortAfter(m.dir, 90*time.Second)
	t.Cleanup(func() {
		stopWatchdog()
		if aborted() {
			t.Errorf("the mount stopped answering; connection aborted. Transport:\n%s", m.tr)
		}
		if err := m.stop(); err != nil {
			t.Error(err)
		}
		requireNoThreadInD(t, os.Getpid())
	})
	return m
}

func startURingMount(dir, backing string, wrap func(fuse.RawFileSystem) fuse.RawFileSystem, logf func(string, ...any)) (*uringMount, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd)
	if err := unix.Mount("uringtest", dir, "fuse.uringtest", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount: %w", err)
	}
	m := &uringMount{dir: dir, backing: backing, fd: fd, devDone: make(chan struct{}), devOps: map[uint32]int{}, ringOps: map[uint32]int{}}

	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return nil, m.failStart(err)
	}
	mo := fuse.MountOptions{MaxWrite: uringTestMaxWrite, ExtraCapabilities: fuse.CAP_OVER_IO_URING}
	raw := fs.NewNodeFS(root, &fs.Options{MountOptions: mo})
	if wrap != nil {
		raw = wrap(raw)
	}
	ps := fuse.NewProtocolServer(raw, &mo)

	in := make([]byte, uringTestMaxWrite+2*os.Getpagesize())
	out := make([]byte, uringTestMaxWrite+2*os.Getpagesize())
	n, err := unix.Read(fd, in)
	if err != nil {
		return nil, m.failStart(fmt.Errorf("reading INIT: %w", err))
	}
	le := binary.LittleEndian
	if n < 60 || le.Uint32(in[4:8]) != fuseOpInit {
		return nil, m.failStart(fmt.Errorf("first request is not INIT (%d bytes)", n))
	}
	if flags2 := le.Uint32(in[56:60]); flags2&(fuse.CAP_OVER_IO_URING>>32) == 0 {
		return nil, m.failStart(errors.New("the kernel's INIT does not offer FUSE_OVER_IO_URING"))
	}
	k, _ := ps.HandleRequest([][]byte{in[:n]}, [][]byte{out})
	if _, err := unix.Write(fd, out[:k]); err != nil {
		return nil, m.failStart(fmt.Errorf("answering INIT: %w", err))
	}

	handle := func(in, out [][]byte) int {
		m.devMu.Lock()
		m.ringOps[binary.LittleEndian.Uint32(in[0][4:8])]++
		m.devMu.Unlock()
		n, _ := ps.HandleRequest(in, out)
		return n
	}
	m.tr, err = StartURing(URingConfig{DevFD: fd, MaxWrite: uringTestMaxWrite, Handle: handle, Logf: logf})
	go m.devLoop(ps, in, out, logf)
	if err != nil {
		return nil, m.failStart(err)
	}
	if err := refusePoll(dir); err != nil {
		return nil, m.failStart(err)
	}
	return m, nil
}

func (m *uringMount) failStart(err error) error {
	_ = unix.Unmount(m.dir, unix.MNT_DETACH)
	if m.tr != nil {
		<-m.devDone
		_ = m.tr.Close()
	}
	unix.Close(m.fd)
	return err
}

// devLoop serves what still comes through read(): FORGETs, INTERRUPTs.
func (m *uringMount) devLoop(ps *fuse.ProtocolServer, in, out []byte, logf func(string, ...any)) {
	defer close(m.devDone)
	for {
		n, err := unix.Read(m.fd, in)
		switch {
		case err == nil:
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
			continue
		case errors.Is(err, unix.ENODEV):
			return
		default:
			logf("/dev/fuse read: %v", err)
			return
		}
		m.devMu.Lock()
		m.devOps[binary.LittleEndian.Uint32(in[4:8])]++
		m.devMu.Unlock()
		k, _ := ps.HandleRequest([][]byte{in[:n]}, [][]byte{out})
		if k > 0 {
			_, _ = unix.Write(m.fd, out[:k])
		}
	}
}

// devRequests lists the opcodes other than FORGET, BATCH_FORGET and
// INTERRUPT that came through /dev/fuse rather than a ring.
func (m *uringMount) devRequests() map[uint32]int {
	m.devMu.Lock()
	defer m.devMu.Unlock()
	r := map[uint32]int{}
	for op, n := range m.devOps {
		if op != fuseOpForget && op != fuseOpBatchForget && op != fuseOpInterrupt {
			r[op] = n
		}
	}
	return r
}

// ringAnswered counts the requests of an opcode the rings answered.
func (m *uringMount) ringAnswered(op uint32) int {
	m.devMu.Lock()
	defer m.devMu.Unlock()
	return m.ringOps[op]
}

func (m *uringMount) served() (total uint64) {
	for _, s := range m.tr.Stats() {
		total += s.Served
	}
	return total
}

// stop unmounts (unless already gone), waits for the connection to end and
// for the transport's threads to leave.
func (m *uringMount) stop() error {
	m.stopOnce.Do(func() { m.stopErr = m.unmountAndWait() })
	return m.stopErr
}

func (m *uringMount) unmountAndWait() error {
	var errs []error
	for i := 0; ; i++ {
		err := unix.Unmount(m.dir, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if !errors.Is(err, unix.EBUSY) || i == 100 {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.dir, err))
			_ = unix.Unmount(m.dir, unix.MNT_DETACH)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-m.devDone:
	case <-time.After(30 * time.Second):
		errs = append(errs, errors.New("the connection did not end within 30s of the unmount"))
		return errors.Join(errs...)
	}
	if err := m.tr.Close(); err != nil {
		errs = append(errs, err)
	}
	unix.Close(m.fd)
	return errors.Join(errs...)
}

// requireNoThreadInD fails if a thread of pid stays in uninterruptible
// sleep. A D state can be a passing disk wait, so it has to last.
func requireNoThreadInD(t testing.TB, pid int) {
	t.Helper()
	var stuck []string
	for range 50 {
		stuck = threadsInD(pid)
		if len(stuck) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("threads of %d stuck in D state: %v", pid, stuck)
}

func threadsInD(pid int) []string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	var stuck []string
	for _, task := range tasks {
		stat, err := os.ReadFile(filepath.Join(task, "stat"))
		if err != nil {
			continue
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || s[i+2] != 'D' {
			continue
		}
		wchan, _ := os.ReadFile(filepath.Join(task, "wchan"))
		stuck = append(stuck, fmt.Sprintf("%s (%s)", filepath.Base(task), wchan))
	}
	return stuck
}

// onCPU runs fn on a thread of its own bound to cpu. The thread ends with
// fn (the goroutine returns locked), taking its affinity with it.
func onCPU(t testing.TB, cpu int, fn func()) {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Errorf("pinning to CPU %d: %v", cpu, err)
		return
	}
	fn()
}

// allowedCPUs lists the CPUs this process may run on.
func allowedCPUs(t testing.TB) []int {
	var set unix.CPUSet
	require.NoError(t, unix.SchedGetaffinity(0, &set))
	var cpus []int
	for i := range 1024 {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

func runtime_Gosched() { runtime.Gosched() }
