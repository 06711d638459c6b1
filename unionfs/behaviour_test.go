package unionfs_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"github.com/pkg/xattr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

// A behaviour check runs against a merged view whose lower layer held
// lower when it was mounted. The same table runs on a plain directory
// (where the check applies), on kernel overlay and on unionmount: the
// first two prove the check itself right.
type behaviour struct {
	name  string
	lower fstest.Spec
	// unionOnly checks need layers (a plain directory has no whiteouts
	// or copy-up to observe).
	unionOnly bool
	// kernelInNamespace, when set, says why kernel overlay inside a user
	// namespace cannot pass the check.
	kernelInNamespace string
	run               func(t *testing.T, m string)
}

// kernelOverlayOptions make kernel overlay behave like unionmount's
// defaults: directory renames by redirect, no metadata-only copy-up. In
// a user namespace the kernel keeps its markers in user.* xattrs and
// then refuses redirects (userxattr implies redirect_dir=nofollow).
func kernelOverlayOptions() []string {
	if fstest.InUserNamespace() {
		return []string{"metacopy=off", "index=off"}
	}
	return []string{"redirect_dir=on", "metacopy=off", "index=off"}
}

// noRedirectInNamespace is why kernel overlay fails checks that rename
// lower directories inside a user namespace.
const noRedirectInNamespace = "kernel overlay cannot rename lower directories in a user namespace (userxattr implies redirect_dir=nofollow)"

type target struct {
	name  string
	union bool
	mount func(t *testing.T, lower fstest.Spec) string
}

var targets = []target{
	{"plain dir", false, func(t *testing.T, lower fstest.Spec) string {
		dir := t.TempDir()
		// Other users reach in as they do in fstest.NewLayers.
		os.Chmod(dir, 0o755)
		os.Chmod(filepath.Dir(dir), 0o755)
		fstest.WriteTree(t, dir, lower)
		return dir
	}},
	{"kernel overlay", true, func(t *testing.T, lower fstest.Spec) string {
		fstest.RequireKernelOverlay(t)
		l := fstest.NewLayers(t, 1)
		fstest.WriteTree(t, l.Lowers[0], lower)
		fstest.MountKernelOverlay(t, l, kernelOverlayOptions()...)
		return l.Mount
	}},
	{"unionmount", true, mountUnionWith()},
	{"unionmount whiteout=xattr", true, mountUnionWith("whiteout=xattr")},
	{"unionmount whiteout=aufs", true, mountUnionWith("whiteout=aufs")},
}

func mountUnionWith(opts ...string) func(t *testing.T, lower fstest.Spec) string {
	return func(t *testing.T, lower fstest.Spec) string {
		l := fstest.NewLayers(t, 1)
		fstest.WriteTree(t, l.Lowers[0], lower)
		fstest.MountUnion(t, l, opts...)
		return l.Mount
	}
}

func TestBehaviourTable(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) {
			for _, tg := range targets {
				if b.unionOnly && !tg.union {
					continue
				}
				t.Run(tg.name, func(t *testing.T) {
					if b.kernelInNamespace != "" && tg.name == "kernel overlay" && fstest.InUserNamespace() {
						t.Skip(b.kernelInNamespace)
					}
					b.run(t, tg.mount(t, b.lower))
				})
			}
		})
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(data)
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(p, &st), "lstat %s", p)
	return &st
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

var behaviours = []behaviour{
	{
		name:  "a write drops a file's capabilities",
		lower: fstest.Spec{"bin": "#!"},
		run: func(t *testing.T, m string) {
			// VFS_CAP_REVISION_2 with CAP_NET_RAW permitted and effective.
			capability := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
			require.NoError(t, unix.Setxattr(m+"/bin", "security.capability", capability, 0))
			_, err := unix.Getxattr(m+"/bin", "security.capability", make([]byte, 64))
			require.NoError(t, err)
			f, err := os.OpenFile(m+"/bin", os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString("more")
			require.NoError(t, err)
			require.NoError(t, f.Close())
			_, err = unix.Getxattr(m+"/bin", "security.capability", make([]byte, 64))
			assert.Equal(t, unix.ENODATA, errnoOf(err))
		},
	},
	{
		name:  "a write or truncation clears set-user-ID and set-group-ID, by a user or by root",
		lower: fstest.Spec{"w": "w", "t": "t", "r": "r"},
		run: func(t *testing.T, m string) {
			if _, err := exec.LookPath("setpriv"); err != nil {
				t.Skip("needs setpriv (util-linux)")
			}
			for _, f := range []string{"w", "t", "r"} {
				require.NoError(t, os.Chmod(m+"/"+f, 0o6777))
			}
			asUser := func(script string) {
				out, err := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c", script).CombinedOutput()
				require.NoError(t, err, "%s", out)
			}
			asUser("echo more >> " + m + "/w")
			asUser(": > " + m + "/t")
			f, err := os.OpenFile(m+"/r", os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString("by root")
			require.NoError(t, err)
			require.NoError(t, f.Close())
			assert.Equal(t, uint32(0o777), lstat(t, m+"/w").Mode&0o7777, "written by a user")
			assert.Equal(t, uint32(0o777), lstat(t, m+"/t").Mode&0o7777, "truncated by a user")
			assert.Equal(t, uint32(0o777), lstat(t, m+"/r").Mode&0o7777, "written by root (Linux 6.2+ clears set-id bits whoever writes)")
			assert.Equal(t, "wmore\n", readFile(t, m+"/w"))
		},
	},
	{
		name:  "a lower file reads through",
		lower: fstest.Spec{"dir/file": "lower content"},
		run: func(t *testing.T, m string) {
			assert.Equal(t, "lower content", readFile(t, m+"/dir/file"))
		},
	},
	{
		name:  "appending to a lower file keeps its old content and its mode",
		lower: fstest.Spec{"f": "one\n"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Chmod(m+"/f", 0o751))
			f, err := os.OpenFile(m+"/f", os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteString("two\n")
			require.NoError(t, err)
			require.NoError(t, f.Close())
			assert.Equal(t, "one\ntwo\n", readFile(t, m+"/f"))
			assert.Equal(t, uint32(0o751), lstat(t, m+"/f").Mode&0o7777)
		},
	},
	{
		name:  "writing at an offset inside a lower file overwrites only those bytes",
		lower: fstest.Spec{"f": "0123456789"},
		run: func(t *testing.T, m string) {
			f, err := os.OpenFile(m+"/f", os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt([]byte("xy"), 4)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			assert.Equal(t, "0123xy6789", readFile(t, m+"/f"))
		},
	},
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
		name:  "readdir lists each name once across the layers",
		lower: fstest.Spec{"d/a": "a", "d/b": "b"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.WriteFile(m+"/d/a", []byte("changed"), 0o644))
			require.NoError(t, os.WriteFile(m+"/d/c", []byte("new"), 0o644))
			assert.Equal(t, []string{"a", "b", "c"}, names(t, m+"/d"))
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
		name:  "the inode number of a file stays the same across its copy-up",
		lower: fstest.Spec{"f": "x", "d/g": "y"},
		run: func(t *testing.T, m string) {
			before := lstat(t, m+"/d/g").Ino
			dirBefore := lstat(t, m+"/d").Ino
			require.NoError(t, os.Chmod(m+"/d/g", 0o600))
			assert.Equal(t, before, lstat(t, m+"/d/g").Ino)
			assert.Equal(t, dirBefore, lstat(t, m+"/d").Ino)
		},
	},
	{
		name:  "truncating a lower file to zero empties it",
		lower: fstest.Spec{"f": "something"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Truncate(m+"/f", 0))
			assert.Equal(t, "", readFile(t, m+"/f"))
			require.NoError(t, os.Truncate(m+"/f", 5))
			assert.Equal(t, "\x00\x00\x00\x00\x00", readFile(t, m+"/f"))
		},
	},
	{
		name:  "chown and utimes of a lower file keep its content",
		lower: fstest.Spec{"f": "keep"},
		run: func(t *testing.T, m string) {
			require.NoError(t, os.Lchown(m+"/f", 1234, 5678))
			require.NoError(t, unix.UtimesNano(m+"/f", []unix.Timespec{{Sec: 1000}, {Sec: 2000}}))
			st := lstat(t, m+"/f")
			assert.Equal(t, [2]uint32{1234, 5678}, [2]uint32{st.Uid, st.Gid})
			assert.Equal(t, int64(2000), st.Mtim.Sec)
			assert.Equal(t, "keep", readFile(t, m+"/f"))
		},
	},
	{
		name:  "an xattr set on a lower file reads back and is listed",
		lower: fstest.Spec{"f": "x"},
		run: func(t *testing.T, m string) {
			require.NoError(t, xattr.LSet(m+"/f", "user.test", []byte("value")))
			v, err := xattr.LGet(m+"/f", "user.test")
			require.NoError(t, err)
			assert.Equal(t, "value", string(v))
			list, err := xattr.LList(m + "/f")
			require.NoError(t, err)
			assert.Contains(t, list, "user.test")
			require.NoError(t, xattr.LRemove(m+"/f", "user.test"))
			_, err = xattr.LGet(m+"/f", "user.test")
			assert.Error(t, err)
		},
	},
	{
		name:  "a file open for reading sees writes made through another descriptor",
		lower: fstest.Spec{"f": "before"},
		run: func(t *testing.T, m string) {
			r, err := os.Open(m + "/f")
			require.NoError(t, err)
			defer r.Close()
			buf := make([]byte, 6)
			_, err = r.ReadAt(buf, 0)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(m+"/f", []byte("after!"), 0o644))
			_, err = r.ReadAt(buf, 0)
			require.NoError(t, err)
			assert.Equal(t, "after!", string(buf))
		},
	},
	{
		name:  "an unlinked open file stays readable and stat-able through its descriptor",
		lower: fstest.Spec{"f": "still here"},
		run: func(t *testing.T, m string) {
			f, err := os.OpenFile(m+"/f", os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			require.NoError(t, os.Remove(m+"/f"))
			st, err := f.Stat()
			require.NoError(t, err)
			assert.Equal(t, int64(10), st.Size())
			buf := make([]byte, 10)
			_, err = f.ReadAt(buf, 0)
			require.NoError(t, err)
			assert.Equal(t, "still here", string(buf))
		},
	},
	{
		name:  "telldir and seekdir return to the same entry",
		lower: fstest.Spec{"d/a": "", "d/b": "", "d/c": "", "d/e": ""},
		run: func(t *testing.T, m string) {
			fd, err := unix.Open(m+"/d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			require.NoError(t, err)
			defer unix.Close(fd)
			first := readAllNames(t, fd)
			_, err = unix.Seek(fd, 0, 0)
			require.NoError(t, err)
			again := readAllNames(t, fd)
			assert.Equal(t, first, again)
			assert.ElementsMatch(t, []string{"a", "b", "c", "e"}, first)
		},
	},
	{
		name:  "readdir while entries are unlinked neither fails nor repeats a name",
		lower: fstest.Spec{"d/a": "", "d/b": "", "d/c": "", "d/e": "", "d/f": ""},
		run: func(t *testing.T, m string) {
			d, err := os.Open(m + "/d")
			require.NoError(t, err)
			defer d.Close()
			got, err := d.Readdirnames(2)
			require.NoError(t, err)
			for _, n := range []string{"a", "b", "c", "e", "f"} {
				os.Remove(m + "/d/" + n)
			}
			rest, _ := d.Readdirnames(-1)
			got = append(got, rest...)
			seen := map[string]bool{}
			for _, n := range got {
				assert.False(t, seen[n], "name %s listed twice", n)
				seen[n] = true
			}
			assert.Empty(t, names(t, m+"/d"))
		},
	},
	{
		name:  "a reader going on after another started the directory over still sees every name once",
		lower: manyFiles("d", 300),
		run: func(t *testing.T, m string) {
			a, err := unix.Open(m+"/d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			require.NoError(t, err)
			defer unix.Close(a)
			buf := make([]byte, 512) // a few names per call
			n, err := unix.ReadDirent(a, buf)
			require.NoError(t, err)
			_, _, first := unix.ParseDirent(buf[:n], -1, nil)
			require.NotEmpty(t, first)
			// Remove what was seen, as rm does; another reader lists the
			// changed directory from the start meanwhile.
			for _, name := range first {
				require.NoError(t, os.Remove(m+"/d/"+name))
			}
			b, err := unix.Open(m+"/d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			require.NoError(t, err)
			defer unix.Close(b)
			assert.Len(t, readAllNames(t, b), 300-len(first))
			seen := map[string]int{}
			for _, name := range append(first, readAllNames(t, a)...) {
				seen[name]++
			}
			for i := 0; i < 300; i++ {
				name := fmt.Sprintf("f%03d", i)
				assert.Equal(t, 1, seen[name], "times %s was listed", name)
			}
		},
	},
	{
		name:  "fstat of an open directory answers after the directory is removed",
		lower: fstest.Spec{"d/": "", "e/": ""},
		run: func(t *testing.T, m string) {
			require.NoError(t, unix.Chmod(m+"/d", 0o751))
			before := lstat(t, m+"/d")
			fd, err := unix.Open(m+"/d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			require.NoError(t, err)
			defer unix.Close(fd)
			efd, err := unix.Open(m+"/e", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			require.NoError(t, err)
			defer unix.Close(efd)
			require.NoError(t, unix.Rmdir(m+"/d"))
			require.NoError(t, unix.Mkdir(m+"/dir1", 0o700))
			require.NoError(t, unix.Rename(m+"/dir1", m+"/e")) // e is replaced
			for name, fd := range map[string]int{"d": fd, "e": efd} {
				var st unix.Stat_t
				if assert.NoError(t, unix.Fstat(fd, &st), name) {
					assert.Equal(t, uint32(unix.S_IFDIR), st.Mode&unix.S_IFMT, name)
				}
				if name == "d" {
					assert.Equal(t, before.Mode, st.Mode)
					assert.Equal(t, before.Ino, st.Ino)
				}
			}
		},
	},
	{
		name:  "record and flock locks of two opens conflict and unlocking frees them",
		lower: fstest.Spec{"d/f": "0123456789abcdef"},
		run: func(t *testing.T, m string) {
			open := func() int {
				fd, err := unix.Open(m+"/d/f", unix.O_RDWR, 0)
				require.NoError(t, err)
				t.Cleanup(func() { unix.Close(fd) })
				return fd
			}
			first, second := open(), open()
			lock := func(typ int16, start, length int64) *unix.Flock_t {
				return &unix.Flock_t{Type: typ, Whence: 0, Start: start, Len: length}
			}
			require.NoError(t, unix.FcntlFlock(uintptr(first), unix.F_OFD_SETLK, lock(unix.F_WRLCK, 0, 10)))
			assert.Equal(t, syscall.EAGAIN, errnoOf(unix.FcntlFlock(uintptr(second), unix.F_OFD_SETLK, lock(unix.F_WRLCK, 5, 10))))
			probe := lock(unix.F_RDLCK, 8, 1)
			require.NoError(t, unix.FcntlFlock(uintptr(second), unix.F_OFD_GETLK, probe))
			assert.Equal(t, int16(unix.F_WRLCK), probe.Type, "the conflicting lock is reported")
			assert.Equal(t, [2]int64{0, 10}, [2]int64{probe.Start, probe.Len})
			require.NoError(t, unix.FcntlFlock(uintptr(second), unix.F_OFD_SETLK, lock(unix.F_WRLCK, 10, 5)), "a range nobody holds")
			require.NoError(t, unix.FcntlFlock(uintptr(first), unix.F_OFD_SETLK, lock(unix.F_UNLCK, 0, 10)))
			require.NoError(t, unix.FcntlFlock(uintptr(second), unix.F_OFD_SETLK, lock(unix.F_WRLCK, 5, 10)))

			require.NoError(t, unix.Flock(first, unix.LOCK_EX))
			assert.Equal(t, syscall.EWOULDBLOCK, errnoOf(unix.Flock(second, unix.LOCK_SH|unix.LOCK_NB)))
			require.NoError(t, unix.Flock(first, unix.LOCK_UN))
			require.NoError(t, unix.Flock(second, unix.LOCK_SH|unix.LOCK_NB))
		},
	},
	{
		name:  "fallocate grows a copied-up file and fdatasync succeeds",
		lower: fstest.Spec{"d/f": "data"},
		run: func(t *testing.T, m string) {
			fd, err := unix.Open(m+"/d/f", unix.O_RDWR, 0)
			require.NoError(t, err)
			defer unix.Close(fd)
			require.NoError(t, unix.Fallocate(fd, 0, 0, 1<<20))
			require.NoError(t, unix.Fdatasync(fd))
			require.NoError(t, unix.Fsync(fd))
			assert.Equal(t, int64(1<<20), lstat(t, m+"/d/f").Size)
			buf := make([]byte, 8)
			n, err := unix.Pread(fd, buf, 0)
			require.NoError(t, err)
			assert.Equal(t, "data\x00\x00\x00\x00", string(buf[:n]))
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
		name:      "a hole in a lower file stays a hole after copy-up",
		lower:     fstest.Spec{"d/": ""},
		unionOnly: true,
		run: func(t *testing.T, m string) {
			// Made through the mount so the layer file is sparse on
			// every target alike; then its copy-up is forced.
			f, err := os.Create(m + "/d/sparse")
			require.NoError(t, err)
			_, err = f.WriteAt([]byte("end"), 8<<20)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			data, err := unix.Open(m+"/d/sparse", unix.O_RDONLY, 0)
			require.NoError(t, err)
			defer unix.Close(data)
			off, err := unix.Seek(data, 0, unix.SEEK_DATA)
			require.NoError(t, err)
			assert.Greater(t, off, int64(0), "data starts after the hole")
			assert.Less(t, lstat(t, m+"/d/sparse").Blocks, int64(1024))
		},
	},
}

func readAllNames(t *testing.T, fd int) []string {
	t.Helper()
	var out []string
	buf := make([]byte, 4096)
	for {
		n, err := unix.ReadDirent(fd, buf)
		require.NoError(t, err)
		if n == 0 {
			return out
		}
		// ParseDirent leaves out "." and "..".
		_, _, out = unix.ParseDirent(buf[:n], -1, out)
	}
}

// manyFiles is a lower layer with count empty files f000... in dir.
func manyFiles(dir string, count int) fstest.Spec {
	spec := fstest.Spec{}
	for i := 0; i < count; i++ {
		spec[fmt.Sprintf("%s/f%03d", dir, i)] = ""
	}
	return spec
}
