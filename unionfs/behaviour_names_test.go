package unionfs_test

import (
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

// nameBehaviours are checks of names: unlink and whiteouts, creation over
// removed names, rmdir, mkdir, rename, links and special files.
var nameBehaviours = []behaviour{
	{
		name:  "unlinking a lower file hides it from lookup and from readdir",
		lower: fstest.Spec{"d/a": "a", "d/b": "b"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Remove(m+"/d/a"))
			_, err := os.Lstat(m + "/d/a")
			assert.True(t, os.IsNotExist(err), "lstat after unlink: %v", err)
			assert.Equal(t, []string{"b"}, names(t, m+"/d"))
		},
	},
	{
		name:  "a removed lower file can be created again and starts empty",
		lower: fstest.Spec{"f": "old"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Remove(m+"/f"))
			f, err := os.OpenFile(m+"/f", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			assert.Equal(t, "", readFile(t, m+"/f"))
			assert.Equal(t, uint32(0o600), lstat(t, m+"/f").Mode&0o777)
		},
	},
	{
		name:  "creating with O_EXCL over a lower file fails with EEXIST",
		lower: fstest.Spec{"f": "old"},
		run: func(t *testing.T, m string) {
			_, err := os.OpenFile(m+"/f", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			assert.Equal(t, syscall.EEXIST, errnoOf(err))
			assert.Equal(t, "old", readFile(t, m+"/f"))
		},
	},
	{
		name:  "rmdir of a non-empty lower directory fails with ENOTEMPTY",
		lower: fstest.Spec{"d/f": "x"},
		run: func(t *testing.T, m string) {
			assert.Equal(t, syscall.ENOTEMPTY, errnoOf(unix.Rmdir(m+"/d")))
			assert.Equal(t, []string{"f"}, names(t, m+"/d"))
		},
	},
	{
		name:  "rmdir of a lower directory emptied by unlinks succeeds",
		lower: fstest.Spec{"d/f": "x", "d/g": "y"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Remove(m+"/d/f"))
			require.NoError(t, os.Remove(m+"/d/g"))
			require.NoError(t, unix.Rmdir(m+"/d"))
			_, err := os.Lstat(m + "/d")
			assert.True(t, os.IsNotExist(err))
		},
	},
	{
		name:  "mkdir over a removed lower directory gives an empty directory",
		lower: fstest.Spec{"d/f": "x", "d/sub/g": "y"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.RemoveAll(m+"/d"))
			require.NoError(t, os.Mkdir(m+"/d", 0o700))
			assert.Empty(t, names(t, m+"/d"))
			assert.Equal(t, uint32(0o700), lstat(t, m+"/d").Mode&0o777)
		},
	},
	{
		name:  "renaming a lower file moves its content and frees the old name",
		lower: fstest.Spec{"a": "content", "d/": ""},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Rename(m+"/a", m+"/d/b"))
			assert.Equal(t, "content", readFile(t, m+"/d/b"))
			_, err := os.Lstat(m + "/a")
			assert.True(t, os.IsNotExist(err))
			assert.Equal(t, []string{"d"}, names(t, m))
		},
	},
	{
		name:  "renaming a lower file over another lower file replaces it",
		lower: fstest.Spec{"a": "A", "b": "B"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Rename(m+"/a", m+"/b"))
			assert.Equal(t, "A", readFile(t, m+"/b"))
			assert.Equal(t, []string{"b"}, names(t, m))
		},
	},
	{
		name:              "renaming a lower directory keeps its whole content",
		kernelInNamespace: noRedirectInNamespace,
		lower:             fstest.Spec{"d/f": "F", "d/sub/g": "G", "other/": ""},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Rename(m+"/d", m+"/other/moved"))
			assert.Equal(t, "F", readFile(t, m+"/other/moved/f"))
			assert.Equal(t, "G", readFile(t, m+"/other/moved/sub/g"))
			assert.Equal(t, []string{"f", "sub"}, names(t, m+"/other/moved"))
			assert.Equal(t, []string{"other"}, names(t, m))
		},
	},
	{
		name:              "a directory renamed over an empty lower directory shows only its own content",
		kernelInNamespace: noRedirectInNamespace,
		lower:             fstest.Spec{"empty/": "", "full/f": "F"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Mkdir(m+"/new", 0o755))
			require.NoError(t, os.WriteFile(m+"/new/n", []byte("N"), 0o644))
			require.NoError(t, unix.Rename(m+"/new", m+"/empty"))
			assert.Equal(t, []string{"n"}, names(t, m+"/empty"))
			assert.Equal(t, syscall.ENOTEMPTY, errnoOf(unix.Rename(m+"/empty", m+"/full")))
		},
	},
	{
		name:  "moving a directory into its own subdirectory fails with EINVAL",
		lower: fstest.Spec{"d/sub/": ""},
		run: func(t *testing.T, m string) {
			assert.Equal(t, syscall.EINVAL, errnoOf(unix.Rename(m+"/d", m+"/d/sub/x")))
		},
	},
	{
		name:              "a hard link to a lower file shares its content and link count",
		kernelInNamespace: "kernel overlay in a user namespace gives the two names of a copied-up hard link different inode numbers",
		lower:             fstest.Spec{"f": "shared"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Link(m+"/f", m+"/g"))
			assert.Equal(t, "shared", readFile(t, m+"/g"))
			require.NoError(t, os.WriteFile(m+"/g", []byte("via g"), 0o644))
			assert.Equal(t, "via g", readFile(t, m+"/f"))
			assert.Equal(t, uint64(2), uint64(lstat(t, m+"/f").Nlink))
			assert.Equal(t, lstat(t, m+"/f").Ino, lstat(t, m+"/g").Ino)
		},
	},
	{
		name:  "a lower symlink resolves and reads back",
		lower: fstest.Spec{"target": "T", "link": "->target"},
		run: func(t *testing.T, m string) {
			got, err := os.Readlink(m + "/link")
			require.NoError(t, err)
			assert.Equal(t, "target", got)
			assert.Equal(t, "T", readFile(t, m+"/link"))
		},
	},
	{
		name:  "fifos and sockets and device nodes can be made",
		lower: fstest.Spec{"d/": ""},
		run: func(t *testing.T, m string) {
			require.NoError(t, unix.Mkfifo(m+"/d/fifo", 0o644))
			require.NoError(t, unix.Mknod(m+"/d/sock", unix.S_IFSOCK|0o644, 0))
			assert.Equal(t, uint32(unix.S_IFIFO), lstat(t, m+"/d/fifo").Mode&unix.S_IFMT)
			assert.Equal(t, uint32(unix.S_IFSOCK), lstat(t, m+"/d/sock").Mode&unix.S_IFMT)
			err := unix.Mknod(m+"/d/null", unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3)))
			if fstest.InUserNamespace() {
				// Only the initial namespace may make devices.
				assert.Equal(t, syscall.EPERM, errnoOf(err))
				return
			}
			require.NoError(t, err)
			st := lstat(t, m+"/d/null")
			assert.Equal(t, uint32(unix.S_IFCHR), st.Mode&unix.S_IFMT)
			assert.Equal(t, unix.Mkdev(1, 3), st.Rdev)
		},
	},
	{
		name:  "a new file in a set-group-ID lower directory takes the directory's group",
		lower: fstest.Spec{"shared/": ""},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Lchown(m+"/shared", 0, 4321))
			require.NoError(t, unix.Chmod(m+"/shared", 0o2775))
			require.NoError(t, os.WriteFile(m+"/shared/f", nil, 0o644))
			require.NoError(t, os.Mkdir(m+"/shared/sub", 0o755))
			assert.Equal(t, uint32(4321), lstat(t, m+"/shared/f").Gid)
			sub := lstat(t, m+"/shared/sub")
			assert.Equal(t, uint32(4321), sub.Gid)
			assert.NotZero(t, sub.Mode&unix.S_ISGID, "subdirectory inherits set-group-ID")
		},
	},
	{
		// A user's new objects are prepared in the work dir and given
		// their owner there; root's are made in place (see create):
		// both must end as the kernel makes them.
		name:  "new objects made by a user belong to that user and in a set-group-ID directory to its group",
		lower: fstest.Spec{"open/": "", "shared/": ""},
		run: func(t *testing.T, m string) {
			if _, err := exec.LookPath("setpriv"); err != nil {
				t.Skip("needs setpriv (util-linux)")
			}
			require.NoError(t, unix.Chmod(m+"/open", 0o777))
			require.NoError(t, os.Lchown(m+"/shared", 0, 4321))
			require.NoError(t, unix.Chmod(m+"/shared", 0o2777))
			for _, dir := range []string{m + "/open", m + "/shared"} {
				out, err := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c",
					"umask 022 && cd "+dir+" && : > f && mkdir d && ln -s f l && mkfifo p").CombinedOutput()
				require.NoError(t, err, "%s", out)
			}
			for _, name := range []string{"f", "d", "l", "p"} {
				st := lstat(t, m+"/open/"+name)
				assert.Equal(t, [2]uint32{1000, 1000}, [2]uint32{st.Uid, st.Gid}, "open/%s", name)
				st = lstat(t, m+"/shared/"+name)
				assert.Equal(t, [2]uint32{1000, 4321}, [2]uint32{st.Uid, st.Gid}, "shared/%s", name)
			}
			assert.Equal(t, uint32(0o644), lstat(t, m+"/open/f").Mode&0o7777)
			assert.Equal(t, uint32(0o755), lstat(t, m+"/open/d").Mode&0o7777)
			assert.Equal(t, uint32(0o2755), lstat(t, m+"/shared/d").Mode&0o7777, "subdirectory inherits set-group-ID")
		},
	},
	{
		name:  "new objects keep the set-id and sticky bits they are made with",
		lower: fstest.Spec{"d/": ""},
		run: func(t *testing.T, m string) {
			old := unix.Umask(0)
			defer unix.Umask(old)
			fd, err := unix.Open(m+"/d/suid", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o6755)
			require.NoError(t, err)
			unix.Close(fd)
			require.NoError(t, unix.Mkdir(m+"/d/sticky", 0o1777))
			require.NoError(t, unix.Mknod(m+"/d/fifo", unix.S_IFIFO|0o2644, 0))
			assert.Equal(t, uint32(0o6755), lstat(t, m+"/d/suid").Mode&0o7777)
			assert.Equal(t, uint32(0o1777), lstat(t, m+"/d/sticky").Mode&0o7777)
			assert.Equal(t, uint32(0o2644), lstat(t, m+"/d/fifo").Mode&0o7777)
			// A user's new file is given its owner after it is made.
			require.NoError(t, unix.Chmod(m+"/d", 0o777))
			asUserOnAThread(t, 1000, 1000, func() error {
				fd, err := unix.Open(m+"/d/users", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o6755)
				if err == nil {
					unix.Close(fd)
				}
				return err
			})
			st := lstat(t, m+"/d/users")
			assert.Equal(t, uint32(1000), st.Uid)
			assert.Equal(t, uint32(0o6755), st.Mode&0o7777, "made by a user in its own group")
		},
	},
}

// asUserOnAThread runs fn on a thread of its own whose filesystem ids
// are uid and gid (which drops root's file capabilities, as for that
// user), then lets the thread end with the goroutine.
func asUserOnAThread(t *testing.T, uid, gid int, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
		done <- fn()
	}()
	require.NoError(t, <-done)
}
