package fuseloop

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

func TestURingLazyUnmountWhileRequestsRunKeepsServingThenEndsTheQueues(t *testing.T) {
	m := mountURing(t, nil)
	cpus := allowedCPUs(t)
	const workers = 4
	var ready sync.WaitGroup
	ready.Add(workers)
	detached := make(chan struct{})
	errs := make(chan error, workers)
	for w := range workers {
		go onCPU(t, cpus[w%len(cpus)], func() {
			dfd, err := unix.Open(m.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				ready.Done()
				errs <- err
				return
			}
			defer unix.Close(dfd)
			round := func(i int) error {
				name := fmt.Sprintf("w%d-%d", w, i%8)
				fd, err := unix.Openat(dfd, name, unix.O_CREAT|unix.O_RDWR|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
				if err != nil {
					return fmt.Errorf("create %s: %w", name, err)
				}
				defer unix.Close(fd)
				if _, err := unix.Write(fd, []byte(name)); err != nil {
					return fmt.Errorf("write %s: %w", name, err)
				}
				buf := make([]byte, 64)
				n, err := unix.Pread(fd, buf, 0)
				if err != nil || string(buf[:n]) != name {
					return fmt.Errorf("read %s back: %q, %v", name, buf[:n], err)
				}
				if i%3 == 0 {
					return unix.Unlinkat(dfd, name, 0)
				}
				return nil
			}
			for i := range 30 {
				if err := round(i); err != nil {
					ready.Done()
					errs <- err
					return
				}
			}
			ready.Done()
			<-detached
			for i := 30; i < 80; i++ {
				if err := round(i); err != nil {
					errs <- fmt.Errorf("after the detach: %w", err)
					return
				}
			}
			errs <- nil
		})
	}
	ready.Wait()
	require.NoError(t, unix.Unmount(m.dir, unix.MNT_DETACH))
	close(detached)
	for range workers {
		assert.NoError(t, <-errs)
	}
	select {
	case <-m.devDone:
	case <-time.After(30 * time.Second):
		t.Fatalf("the connection did not end once the last file of the detached mount closed. Transport:\n%s", m.tr)
	}
	require.NoError(t, m.tr.Close())
	for _, s := range m.tr.Stats() {
		assert.Zero(t, s.Live, "queue %d has no entry left with the kernel", s.CPU)
	}
}

func TestURingForcedUnmountWhileLookupsAreInFlightEndsTheQueues(t *testing.T) {
	m := mountURing(t, nil)
	cpus := allowedCPUs(t)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var rounds atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			onCPU(t, cpus[w%len(cpus)], func() {
				var st unix.Stat_t
				for i := 0; !stop.Load(); i++ {
					_ = unix.Stat(filepath.Join(m.dir, fmt.Sprintf("missing-%d-%d", w, i)), &st)
					rounds.Add(1)
				}
			})
		}()
	}
	for rounds.Load() < 200 {
		runtime.Gosched()
	}
	// umount -f aborts the connection under the running lookups (the
	// unmount proper may still find the mount busy with them).
	err := unix.Unmount(m.dir, unix.MNT_FORCE)
	if err != nil {
		require.ErrorIs(t, err, unix.EBUSY)
	}
	stop.Store(true)
	wg.Wait()
	require.NoError(t, m.stop())
	for _, s := range m.tr.Stats() {
		assert.Zero(t, s.Live, "queue %d has no entry left with the kernel", s.CPU)
	}
}

// The daemon half of TestURingKillingTheDaemonWhileRequestsWait: it
// serves a mount whose lookups of wait-* never return.
func TestURingDaemonProcess(t *testing.T) {
	dir := os.Getenv("UNIONMOUNT_URING_TEST_DAEMON")
	if dir == "" {
		t.Skip("run by TestURingKillingTheDaemonWhileRequestsWait")
	}
	w := &waitingLookups{entered: make(chan string), release: make(chan struct{})}
	_, err := startURingMount(dir, t.TempDir(), func(raw fuse.RawFileSystem) fuse.RawFileSystem { w.RawFileSystem = raw; return w }, func(string, ...any) {})
	if err != nil {
		fmt.Println("error", err)
		return
	}
	fmt.Println("ready")
	for name := range w.entered {
		fmt.Println("entered", name)
	}
}

func TestURingKillingTheDaemonWhileRequestsWaitLeavesNoThreadStuck(t *testing.T) {
	requireURing(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestURingDaemonProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "UNIONMOUNT_URING_TEST_DAEMON="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(out)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	expect := func(prefix string) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				require.True(t, ok, "the daemon ended before saying %q", prefix)
				require.False(t, strings.HasPrefix(l, "error"), l)
				if strings.HasPrefix(l, prefix) {
					return
				}
			case <-deadline:
				t.Fatalf("the daemon never said %q", prefix)
			}
		}
	}
	expect("ready")
	stopWatchdog, _ := fstest.AbortAfter(dir, 120*time.Second)
	defer stopWatchdog()
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })

	cpus := allowedCPUs(t)
	clientErrs := make(chan error, len(cpus))
	for i, cpu := range cpus {
		go onCPU(t, cpu, func() {
			var st unix.Stat_t
			clientErrs <- unix.Stat(filepath.Join(dir, fmt.Sprintf("wait-%d", i)), &st)
		})
		expect("entered")
	}

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("the killed daemon did not exit; its threads in D: %v", threadsInD(cmd.Process.Pid))
	}
	for range cpus {
		select {
		case err := <-clientErrs:
			assert.True(t, errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.ENOTCONN), "a waiting caller ends with the connection: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("a caller still waits on the dead daemon's mount")
		}
	}
	require.NoError(t, unix.Unmount(dir, 0))
	requireNoThreadInD(t, os.Getpid())
}
