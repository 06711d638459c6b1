package containertest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// UserName is the ordinary user rootless tests run as, the one the other
// rootless tests of this repository create.
const UserName = "unionmount-test"

// subIDStart and subIDCount are the subordinate ids given to the user
// when it has none: clear of the id range internal/userns maps.
const (
	subIDStart = 200000
	subIDCount = 65536
)

// User is an ordinary user with subordinate uid and gid ranges, and a
// FUSE device node it may open, bound over /dev/fuse in the private mount
// namespace its commands run in (the host's node stays as it is).
type User struct {
	Name     string
	UID, GID int
	fuseDev  string
}

// RequireUser returns the test user, creating it and its /etc/subuid and
// /etc/subgid ranges if missing; it skips the test where that cannot be
// done (no useradd, no newuidmap).
func RequireUser(t testing.TB) *User {
	t.Helper()
	for _, tool := range []struct{ cmd, pkg string }{{"useradd", "passwd"}, {"usermod", "passwd"},
		{"newuidmap", "uidmap"}, {"newgidmap", "uidmap"}, {"setpriv", "util-linux"}, {"unshare", "util-linux"}} {
		if _, err := exec.LookPath(tool.cmd); err != nil {
			t.Skipf("needs %s (Debian package %s)", tool.cmd, tool.pkg)
		}
	}
	u, err := user.Lookup(UserName)
	if err != nil {
		if out, err := exec.Command("useradd", "--system", "--no-create-home", UserName).CombinedOutput(); err != nil {
			t.Skipf("cannot create the test user: %v: %s", err, out)
		}
		if u, err = user.Lookup(UserName); err != nil {
			t.Skipf("no test user: %v", err)
		}
	}
	for _, f := range []struct{ file, flag string }{{"/etc/subuid", "--add-subuids"}, {"/etc/subgid", "--add-subgids"}} {
		if hasSubIDs(f.file, u.Username, u.Uid) {
			continue
		}
		ids := fmt.Sprintf("%d-%d", subIDStart, subIDStart+subIDCount-1)
		if out, err := exec.Command("usermod", f.flag, ids, UserName).CombinedOutput(); err != nil {
			t.Skipf("cannot give the test user subordinate ids: %v: %s", err, out)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	dev := filepath.Join(dir, "fuse")
	if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 229))); err != nil {
		t.Skipf("cannot make a FUSE device node: %v", err)
	}
	if err := os.Chmod(dev, 0o666); err != nil {
		t.Fatal(err)
	}
	return &User{Name: u.Username, UID: uid, GID: gid, fuseDev: dev}
}

// hasSubIDs reports whether file gives name (or uid) a range.
func hasSubIDs(file, name, uid string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		owner, _, ok := strings.Cut(sc.Text(), ":")
		if ok && (owner == name || owner == uid) {
			return true
		}
	}
	return false
}

// Command returns argv run as the user, with home as $HOME, in a private
// mount namespace where /dev/fuse is a node the user may open.
func (u *User) Command(home string, argv ...string) *exec.Cmd {
	script := `mount --bind "$FUSE_DEV" /dev/fuse || exit 1
exec setpriv --reuid="$RUN_UID" --regid="$RUN_GID" --clear-groups "$@"`
	args := append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "sh"}, argv...)
	cmd := exec.Command("unshare", args...)
	cmd.Env = []string{"FUSE_DEV=" + u.fuseDev, "RUN_UID=" + strconv.Itoa(u.UID), "RUN_GID=" + strconv.Itoa(u.GID),
		"HOME=" + home, "USER=" + u.Name, "LOGNAME=" + u.Name}
	return cmd
}
