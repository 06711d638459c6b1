package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/thinblock/control"
)

// errLocked marks a pool whose lock another process holds.
var errLocked = errors.New("in use by another process")

// lockedError is a pool locked by another process: which file, and who
// holds it as far as /proc/locks tells.
type lockedError struct {
	path   string
	holder string // "process 123 (thinblock serve nbd --pool p)", or "" when unknown
	// control is the control socket tried, and why it did not answer;
	// empty when none was tried.
	control, controlErr string
}

func (e *lockedError) Error() string {
	who := "another process"
	if e.holder != "" {
		who = e.holder
	}
	msg := fmt.Sprintf("pool metadata %s is in use by %s", e.path, who)
	if e.control != "" {
		msg += fmt.Sprintf(", and no control socket answers at %s (%s), so it is not a running `thinblock serve`", e.control, e.controlErr)
	}
	return msg
}

func (e *lockedError) Unwrap() error { return errLocked }

// lockHolder names the process holding a lock on the file open as fd,
// from /proc/locks (matched by device and inode), or "" when it cannot
// tell.
func lockHolder(fd int) string {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return ""
	}
	locks, err := os.Open("/proc/locks")
	if err != nil {
		return ""
	}
	defer locks.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	sc := bufio.NewScanner(locks)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"; a waiter's
		// line has "->" after the number.
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] == "->" || fields[5] != want {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err != nil || pid == os.Getpid() {
			continue
		}
		return describeProcess(pid)
	}
	return ""
}

// describeProcess names a process by pid and command line.
func describeProcess(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	cmdline := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if err != nil || cmdline == "" {
		return fmt.Sprintf("process %d", pid)
	}
	return fmt.Sprintf("process %d (%s)", pid, cmdline)
}

// controlPath is the control socket of the pool whose metadata is meta.
func controlPath(meta string) string {
	return filepath.Join(filepath.Dir(meta), "control.sock")
}

// dialControl reaches a served pool's control socket, or says why not in
// the locked error.
func dialControl(meta string, le *lockedError) (*control.Client, error) {
	le.control = controlPath(meta)
	c, err := control.Dial(le.control)
	if err != nil {
		var se *os.SyscallError
		if errors.As(err, &se) {
			le.controlErr = se.Err.Error()
		} else {
			le.controlErr = err.Error()
		}
		return nil, le
	}
	return c, nil
}
