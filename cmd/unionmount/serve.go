package main

import (
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"

	"github.com/unionmount/unionmount/internal/mountstate"
	"github.com/unionmount/unionmount/unionfs"
)

// daemonEnv tells a re-executed unionmount that it is the background
// server and which fd reports readiness to the waiting parent.
const daemonEnv = "_UNIONMOUNT_READY_FD"

func isDaemon() bool { return os.Getenv(daemonEnv) != "" }

// daemonize re-runs the command in the background and waits until it
// reports the mount ready (exit 0) or failed (its exit code), so that
// mount(8) returns only once the mount can be used.
func daemonize(stderr io.Writer) int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "unionmount: %v\n", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "unionmount: find own executable: %v\n", err)
		return 1
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "unionmount: start server: %v\n", err)
		return 1
	}
	w.Close()
	status, _ := io.ReadAll(r)
	r.Close()
	line := strings.TrimSpace(string(status))
	if line == "ok" {
		cmd.Process.Release()
		return 0
	}
	cmd.Wait()
	code, msg, found := strings.Cut(line, " ")
	n, err := strconv.Atoi(code)
	if !found || err != nil {
		fmt.Fprintf(stderr, "unionmount: server exited before the mount was ready\n")
		return 1
	}
	fmt.Fprintf(stderr, "unionmount: %s\n", msg)
	return n
}

// serve mounts and serves until unmounted or signalled.
func serve(mountpoint string, given []string, opts unionfs.Options, stderr io.Writer) int {
	ready := readyPipe()
	logger := log.New(stderr, "unionmount: ", log.LstdFlags)
	logPath := ""
	if ready != nil {
		// In the background nobody reads stderr: log to a file the
		// user can find (status names it), and to syslog where the
		// machine has one.
		var closeLog func()
		logger, logPath, closeLog = backgroundLogger(mountpoint)
		defer closeLog()
	}
	// Signals are caught from before the mount is visible: a SIGTERM that
	// comes the moment the mount shows still unmounts cleanly.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	server, ufs, err := unionfs.Mount(mountpoint, opts, logger)
	if err != nil {
		code := exitCode(err)
		if ready != nil {
			fmt.Fprintf(ready, "%d %v\n", code, err)
			ready.Close()
		} else {
			fmt.Fprintf(stderr, "unionmount: %v\n", err)
		}
		return code
	}
	defer ufs.Close()
	spareProcessors()
	idle := make(chan struct{})
	defer close(idle)
	go releaseMemoryWhenIdle(idle, idleAfter, func() {
		server.ReleaseIdleMemory()
		debug.FreeOSMemory()
	})
	if path := os.Getenv("UNIONMOUNT_CPUPROFILE"); path != "" {
		// For performance work: a CPU profile of the whole serve.
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	if path := os.Getenv("UNIONMOUNT_HEAPPROFILE"); path != "" {
		// For memory work: what the heap holds when serving ends.
		defer func() {
			if f, err := os.Create(path); err == nil {
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	abs, _ := filepath.Abs(mountpoint)
	dev, err := mountstate.DeviceOf(abs)
	if err != nil {
		logger.Printf("%s: %v", mountpoint, err)
	} else {
		control := mountstate.ControlPath(mountstate.Dir(), dev)
		record := func() error {
			_, err := writeRecord(abs, dev, given, opts, ufs, logPath, control)
			return err
		}
		stop, err := serveControl(control, ufs, record, logger)
		if err != nil {
			logger.Printf("%s: no control socket (branch changes refused): %v", mountpoint, err)
			control = ""
		} else {
			defer stop()
		}
		if remove, err := writeRecord(abs, dev, given, opts, ufs, logPath, control); err != nil {
			logger.Printf("%s: no status record: %v", mountpoint, err)
		} else {
			defer remove()
		}
	}
	if ready != nil {
		fmt.Fprintln(ready, "ok")
		ready.Close()
		detachStdio()
	}
	served := make(chan struct{})
	go func() {
		server.Wait()
		close(served)
	}()
	for {
		select {
		case <-served:
			return 0
		case sig := <-signals:
			err := server.Unmount()
			if err == nil {
				continue // served closes once the requests have drained
			}
			if dev != "" && !mountedHere(abs, dev) {
				// Unmounted here while a copy of the mount lives in
				// another mount namespace: nothing here can unmount
				// that, and a daemon left serving it would never end.
				// Ending closes the FUSE device, which aborts the
				// connection for every copy.
				logger.Printf("%v: %s is no longer mounted in this mount namespace; ending the connection that copies in other namespaces still use", sig, mountpoint)
				return 0
			}
			// fusermount's message spans lines: keep one.
			msg := strings.Join(strings.Fields(err.Error()), " ")
			logger.Printf("%v: unmount %s: %s (still serving)", sig, mountpoint, msg)
		}
	}
}

// mountedHere reports whether the union with device dev is still mounted
// at mountpoint in this mount namespace.
func mountedHere(mountpoint, dev string) bool {
	mounts, err := mountstate.List("", fsType)
	if err != nil {
		return true // cannot tell: keep serving
	}
	for _, m := range mounts {
		if m.Mountpoint == mountpoint && m.Device == dev {
			return true
		}
	}
	return false
}

// readyPipe returns the readiness pipe of a background server.
func readyPipe() *os.File {
	v := os.Getenv(daemonEnv)
	if v == "" {
		return nil
	}
	os.Unsetenv(daemonEnv)
	fd, err := strconv.Atoi(v)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), "ready")
}

// detachStdio points stdin, stdout and stderr at /dev/null so the
// background server holds no terminal or pipe of its caller.
func detachStdio() {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return
	}
	for fd := 0; fd <= 2; fd++ {
		syscall.Dup2(int(null.Fd()), fd)
	}
	null.Close()
}

// spareProcessors gives the Go scheduler more processors than the
// machine has CPUs, once the server is made. go-fuse sizes its pool of
// goroutines blocked reading /dev/fuse by GOMAXPROCS when the server is
// made (two here), and a goroutine blocked in a system call holds its
// processor: with every processor so held, the runtime's monitor keeps
// taking them back and waking threads to run nothing, every 20 µs
// while the union is busy. Spare processors stay idle instead, and a
// daemon blocked on a cold disk stops churning (docs/measurements.md).
func spareProcessors() {
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 2)
}
