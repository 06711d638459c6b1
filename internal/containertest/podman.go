// Package containertest drives podman for tests: a private storage root
// configured through its own storage.conf (kernel overlay, or overlay
// with a mount_program such as unionmount), run as root or as an
// ordinary user with subordinate ids; tiny Debian packages built with
// dpkg-deb; and listings of what a container sees and of a committed
// layer, to compare one storage set-up with another.
//
// It runs programs and reads their output; it never imports the union.
package containertest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Podman is one podman storage set-up.
type Podman struct {
	// Dir holds the storage (root/, run/), the configuration and, for
	// a user, its home and runtime directory.
	Dir string
	// MountProgram is overlay's mount_program; "" mounts kernel overlay.
	MountProgram string
	// User, if set, runs podman rootless as this user.
	User *User
	conf string
	env  []string
}

// RequirePodman skips the test unless podman and runc are installed and
// this process is root (rootless runs switch to a test user from root).
func RequirePodman(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (storage roots, switching to a test user)")
	}
	for _, tool := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian package %s)", tool, tool)
		}
	}
}

// NewPodman makes a storage set-up in a fresh directory, removed at
// cleanup. Its storage.conf is what the README shows: driver overlay
// and, with mountProgram, overlay.mount_program. At cleanup every
// container is removed and whatever stays mounted under it is detached.
func NewPodman(t testing.TB, mountProgram string, user *User) *Podman {
	t.Helper()
	// A short path: podman refuses a run root longer than 50 bytes on
	// its command line; given one through storage.conf (t.TempDir's),
	// every podman run here waited about 20 s more.
	dir, err := os.MkdirTemp("", "umt-podman-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &Podman{Dir: dir, MountProgram: mountProgram, User: user, conf: filepath.Join(dir, "storage.conf")}
	if user != nil {
		for _, d := range []string{"home", "xdg"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []string{"home", "xdg", "root", "run"} {
			os.MkdirAll(filepath.Join(dir, d), 0o700)
			if err := os.Chown(filepath.Join(dir, d), user.UID, user.GID); err != nil {
				t.Fatal(err)
			}
		}
		p.env = []string{"HOME=" + filepath.Join(dir, "home"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "xdg")}
	}
	if err := os.WriteFile(p.conf, []byte(p.StorageConf()), 0o644); err != nil {
		t.Fatal(err)
	}
	p.env = append(p.env, "CONTAINERS_STORAGE_CONF="+p.conf)
	t.Cleanup(func() { p.cleanup(t) })
	return p
}

// Name says which storage and which user: "kernel overlay as root".
func (p *Podman) Name() string {
	name := "kernel overlay"
	if p.MountProgram != "" {
		name = filepath.Base(p.MountProgram)
	}
	if p.User != nil {
		return name + " as " + p.User.Name
	}
	return name + " as root"
}

// StorageConf is the storage.conf this set-up runs with.
func (p *Podman) StorageConf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(p.Dir, "root"), filepath.Join(p.Dir, "run"))
	if p.MountProgram != "" {
		fmt.Fprintf(&b, "\n[storage.options.overlay]\nmount_program = %q\nmountopt = \"nodev\"\n", p.MountProgram)
	}
	return b.String()
}

// globalArgs are podman's options for this machine: runc (the runtime
// the test deps install; the host has cgroup v1), cgroupfs (no systemd to
// ask), events to a file.
var globalArgs = []string{"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"}

// Command returns podman with args, run as the set-up's user if any.
func (p *Podman) Command(args ...string) *exec.Cmd {
	return p.tool(append(append([]string{"podman"}, globalArgs...), args...))
}

// tool returns argv run as the set-up's user if any, with its storage.
func (p *Podman) tool(argv []string) *exec.Cmd {
	var cmd *exec.Cmd
	if p.User == nil {
		cmd = exec.Command(argv[0], argv[1:]...)
	} else {
		cmd = p.User.Command(filepath.Join(p.Dir, "home"), argv...)
	}
	cmd.Dir = p.Dir
	cmd.Env = append(append(os.Environ(), p.env...), cmd.Env...)
	return cmd
}

// Run runs podman with args and returns its standard output; it fails
// the test, with podman's messages, if podman fails.
func (p *Podman) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := p.Output(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Output runs podman with args and returns its standard output, or an
// error carrying its messages.
func (p *Podman) Output(args ...string) (string, error) {
	return p.output(p.Command(args...), "podman", args)
}

// Buildah runs buildah with args on the same storage and returns its
// standard output; it fails the test if buildah fails.
func (p *Podman) Buildah(t testing.TB, args ...string) string {
	t.Helper()
	out, err := p.output(p.tool(append([]string{"buildah"}, args...)), "buildah", args)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (p *Podman) output(cmd *exec.Cmd, name string, args []string) (string, error) {
	start := time.Now()
	defer func() {
		if os.Getenv("CONTAINERTEST_TIMES") != "" {
			fmt.Fprintf(os.Stderr, "%s: %s %s: %s\n", p.Name(), name, args[0], time.Since(start).Round(10*time.Millisecond))
		}
	}()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, shortArgs(args), err, tail(stdout.String(), 40), tail(stderr.String(), 40))
	}
	return stdout.String(), nil
}

// shortArgs joins args for a message, each cut to its first line.
func shortArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if first, _, cut := strings.Cut(a, "\n"); cut {
			a = first + "..."
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// RunArgs are the options every container of a test gets: no network
// (none is reachable), and limits no higher than this process's, which
// runc cannot raise without CAP_SYS_RESOURCE.
func RunArgs() []string {
	args := []string{"--net=none"}
	for _, l := range []struct {
		name     string
		resource int
		most     uint64
	}{{"nofile", unix.RLIMIT_NOFILE, 1024}, {"nproc", unix.RLIMIT_NPROC, 1024}} {
		var r unix.Rlimit
		if unix.Getrlimit(l.resource, &r) == nil {
			n := min(r.Cur, l.most)
			args = append(args, fmt.Sprintf("--ulimit=%s=%d:%d", l.name, n, n))
		}
	}
	return args
}

// scratch is a directory podman's user may write.
func (p *Podman) scratch() string {
	if p.User != nil {
		return filepath.Join(p.Dir, "home")
	}
	return p.Dir
}

// Import imports a root filesystem tarball as image name.
func (p *Podman) Import(t testing.TB, tarball, name string) {
	t.Helper()
	p.Run(t, "import", "--quiet", tarball, name)
}

// cleanup removes the containers and detaches every mount left under
// the set-up (c/storage may leave its layer mounts and a private bind
// of its root), so that t.TempDir can be removed; a rootless set-up's
// pause process is ended.
func (p *Podman) cleanup(t testing.TB) {
	if out, err := p.Output("rm", "--all", "--force"); err != nil {
		t.Logf("podman rm: %v %s", err, out)
	}
	if p.User != nil {
		if data, err := os.ReadFile(filepath.Join(p.Dir, "xdg", "libpod", "tmp", "pause.pid")); err == nil {
			var pid int
			if _, err := fmt.Sscan(string(data), &pid); err == nil && pid > 1 {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	for i := 0; i < 20; i++ {
		mounts := MountsUnder(p.Dir)
		if len(mounts) == 0 {
			return
		}
		for _, m := range mounts {
			unix.Unmount(m, unix.MNT_DETACH)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// MountsUnder lists this mount namespace's mount points under dir,
// deepest first.
func MountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append([]string{mp}, out...)
		}
	}
	return out
}

func unescapeMountinfo(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
