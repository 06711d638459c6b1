package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// readyEnv tells a re-executed `thinblock serve` that it runs in the
// background and which fd reports readiness to the waiting parent.
const readyEnv = "_THINBLOCK_READY_FD"

// serviceFlags run a server as a service: in the background once ready,
// with a pid file and a log file.
type serviceFlags struct {
	daemon  bool
	pidFile string
	logFile string
}

func (f *serviceFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&f.daemon, "daemon", false, "serve in the background: the command returns once the sockets (and the mount) are ready, or fails with the server's error")
	fs.StringVar(&f.pidFile, "pid-file", "", "write the server's pid to FILE while it serves")
	fs.StringVar(&f.logFile, "log-file", "", "with --daemon, where the log goes (default serve.log beside the pool's metadata)")
}

// service is a server's side of readiness: the pipe to a waiting parent
// (with --daemon), systemd's notification socket (Type=notify), the pid
// file.
type service struct {
	flags   serviceFlags
	pipe    *os.File // nil when not started by daemonize
	logPath string
}

// startService, when --daemon is given and this is not yet the
// background server, starts that server and waits for it: done is then
// set and err carries the exit status. Otherwise it returns the service
// whose ready the server calls once it serves.
func startService(f serviceFlags, meta string, stderr io.Writer) (svc *service, done bool, err error) {
	svc = &service{flags: f}
	if v := os.Getenv(readyEnv); v != "" {
		os.Unsetenv(readyEnv)
		if fd, err := strconv.Atoi(v); err == nil {
			svc.pipe = os.NewFile(uintptr(fd), "ready")
		}
	}
	if f.daemon && svc.pipe == nil {
		return nil, true, daemonize(stderr)
	}
	if svc.pipe != nil {
		svc.logPath = f.logFile
		if svc.logPath == "" {
			svc.logPath = filepath.Join(filepath.Dir(meta), "serve.log")
		}
	}
	return svc, false, nil
}

// daemonize runs the same command in the background, in its own
// session, and waits until it reports ready (the command then succeeds)
// or exits (the command fails with its status; its error went to our
// stderr, which it shares until ready).
func daemonize(stderr io.Writer) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the server: %w", err)
	}
	w.Close()
	status, _ := io.ReadAll(r)
	r.Close()
	if strings.TrimSpace(string(status)) == "ok" {
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code > 0 {
		return exitError(code)
	}
	return fmt.Errorf("the server ended before it was ready (%v)", cmd.ProcessState)
}

// ready is called once the server serves: the pid file is written,
// systemd told, and a waiting parent released, after which the log goes
// to the log file and the terminal is let go. It returns the function
// to call at exit.
func (s *service) ready(logf func(string, ...any)) func() {
	cleanup := func() {}
	if s.flags.pidFile != "" {
		if err := writePidFile(s.flags.pidFile); err != nil {
			logf("pid file: %v", err)
		} else {
			cleanup = func() { os.Remove(s.flags.pidFile) }
		}
	}
	if err := sdNotify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid())); err != nil {
		logf("notify systemd: %v", err)
	}
	if s.pipe == nil {
		return cleanup
	}
	if err := redirectStdio(s.logPath); err != nil {
		logf("log file %s: %v (logging to nowhere)", s.logPath, err)
	}
	fmt.Fprintln(s.pipe, "ok")
	s.pipe.Close()
	return cleanup
}

// writePidFile writes the pid through a temporary file renamed into
// place, so a reader never sees it half-written.
func writePidFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// redirectStdio points stdin and stdout at /dev/null and stderr (where
// the log goes) at the log file, so the background server holds no
// terminal or pipe of its caller.
func redirectStdio(logPath string) error {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	syscall.Dup2(int(null.Fd()), 0)
	syscall.Dup2(int(null.Fd()), 1)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		syscall.Dup2(int(null.Fd()), 2)
		return err
	}
	defer logf.Close()
	return syscall.Dup2(int(logf.Fd()), 2)
}

// sdNotify sends a state to systemd when it started us with
// NOTIFY_SOCKET (a unit of Type=notify); otherwise it does nothing.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
