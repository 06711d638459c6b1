// Package userns runs programs as root of a new user namespace (with its
// own mount namespace) whose ids are shifted host ids, as a rootless
// container runs: container id 0 is host id IDBase. Tests and the
// benchmark harness use it to exercise the union without privilege.
package userns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// IDBase is the host id of the namespace's id 0.
const IDBase = 100000

// idCount is how many ids the namespace maps; 65534, the overflow id, is
// among them.
const idCount = 65536

// Inside reports whether this process runs in a user namespace other
// than the initial one.
func Inside() bool {
	data, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data))
	return !(len(fields) == 3 && fields[0] == "0" && fields[1] == "0" && fields[2] == "4294967295")
}

// Available says why a namespace cannot be made here, or nil if it can.
// Mapping a range of host ids takes root.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("mapping a range of host ids into a user namespace needs root")
	}
	if data, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(data)) == "0" {
		return errors.New("user namespaces are disabled (user.max_user_namespaces=0)")
	}
	probe := exec.Command("/bin/true")
	probe.SysProcAttr = attr()
	if err := probe.Run(); err != nil {
		return fmt.Errorf("cannot start a process in a new user namespace here: %w", err)
	}
	return nil
}

// Prepare readies dir, which must exist, for namespace runs: it and its
// parent become readable by everyone, it gets copies of bins (mapped root
// has no power over host-owned files, so it may not reach the originals)
// and a FUSE device node anyone may open. It returns the copies' paths.
func Prepare(dir string, bins ...string) ([]string, error) {
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, err
		}
	}
	var copies []string
	for _, bin := range bins {
		data, err := os.ReadFile(bin)
		if err != nil {
			return nil, err
		}
		c := filepath.Join(dir, filepath.Base(bin))
		if err := os.WriteFile(c, data, 0o755); err != nil {
			return nil, err
		}
		copies = append(copies, c)
	}
	// Mapped root cannot open the host's /dev/fuse where only host root
	// may (mode 0600 on some machines): a copy of the node anyone may
	// open is bound over it inside the namespace, as rootless hosts have
	// /dev/fuse.
	fuseDev := filepath.Join(dir, "fuse")
	if err := unix.Mknod(fuseDev, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 229))); err != nil {
		return nil, fmt.Errorf("make a FUSE device node: %w", err)
	}
	if err := os.Chmod(fuseDev, 0o666); err != nil {
		return nil, err
	}
	return copies, nil
}

// Command returns a shell running script (with args as $1...) in a new
// namespace, from dir, which Prepare readied.
func Command(dir, script string, args ...string) *exec.Cmd {
	wrapped := `mount --bind "$FUSE_DEV" /dev/fuse || exit 1
` + script
	cmd := exec.Command("/bin/sh", append([]string{"-c", wrapped, "sh"}, args...)...)
	cmd.Dir = dir
	cmd.SysProcAttr = attr()
	cmd.Env = append(os.Environ(), "HOME="+dir, "TMPDIR=/tmp", "FUSE_DEV="+filepath.Join(dir, "fuse"))
	return cmd
}

func attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: IDBase, Size: idCount}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: IDBase, Size: idCount}},
		Credential:  &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
		// Tests switch users inside (setpriv --clear-groups).
		GidMappingsEnableSetgroups: true,
	}
}
