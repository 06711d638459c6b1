package unionfs_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/pkg/xattr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

func TestCopyUpKeepsModeOwnerTimesXattrsAndHoles(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	lower := filepath.Join(l.Lowers[0], "f")
	f, err := os.Create(lower)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("tail"), 16<<20) // a 16 MiB hole, then data
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Lchown(lower, 1234, 5678))
	require.NoError(t, unix.Chmod(lower, 0o4751))
	require.NoError(t, xattr.LSet(lower, "user.kept", []byte("yes")))
	require.NoError(t, xattr.LSet(lower, "trusted.kept", []byte("also")))
	times := []unix.Timespec{{Sec: 1111, Nsec: 1}, {Sec: 2222, Nsec: 2}}
	require.NoError(t, unix.UtimesNanoAt(unix.AT_FDCWD, lower, times, unix.AT_SYMLINK_NOFOLLOW))
	uniontest.Mount(t, l)

	// A metadata change copies the file up without touching data or times.
	require.NoError(t, xattr.LSet(l.Mount+"/f", "user.added", []byte("1")))

	up := lstat(t, l.Upper+"/f")
	assert.Equal(t, uint32(unix.S_IFREG|0o4751), up.Mode, "mode with set-user-ID")
	assert.Equal(t, [2]uint32{1234, 5678}, [2]uint32{up.Uid, up.Gid})
	assert.Equal(t, times[1], up.Mtim)
	assert.Equal(t, int64(16<<20+4), up.Size)
	assert.Less(t, up.Blocks, int64(64), "the hole was kept (%d blocks)", up.Blocks)
	for name, want := range map[string]string{"user.kept": "yes", "trusted.kept": "also", "user.added": "1"} {
		v, err := xattr.LGet(l.Upper+"/f", name)
		if assert.NoError(t, err, name) {
			assert.Equal(t, want, string(v), name)
		}
	}
	data, err := os.ReadFile(l.Mount + "/f")
	require.NoError(t, err)
	assert.Equal(t, "tail", string(data[16<<20:]))
	assert.Equal(t, make([]byte, 16<<20), data[:16<<20])
	assert.Equal(t, up.Mtim, lstat(t, l.Mount+"/f").Mtim, "merged view shows the kept time")
}

func TestUnlinkLeavesAWhiteoutDevice(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/gone": "x", "d/kept": "y"})
	uniontest.Mount(t, l)
	require.NoError(t, os.Remove(l.Mount+"/d/gone"))
	st := lstat(t, l.Upper+"/d/gone")
	assert.Equal(t, uint32(unix.S_IFCHR), st.Mode&unix.S_IFMT)
	assert.Equal(t, uint64(0), st.Rdev, "whiteout is device 0/0")
	assert.Equal(t, []string{"kept"}, names(t, l.Mount+"/d"))
	assert.NoFileExists(t, l.Upper+"/d/kept", "an untouched sibling is not copied up")
}

func TestMkdirOverRemovedDirIsOpaque(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/f": "x"})
	uniontest.Mount(t, l)
	require.NoError(t, os.RemoveAll(l.Mount+"/d"))
	assert.Equal(t, uint64(0), lstat(t, l.Upper+"/d").Rdev)
	require.NoError(t, os.Mkdir(l.Mount+"/d", 0o755))
	v, err := xattr.LGet(l.Upper+"/d", "trusted.overlay.opaque")
	require.NoError(t, err)
	assert.Equal(t, "y", string(v))
	assert.Empty(t, names(t, l.Mount+"/d"))
	_, err = xattr.LGet(l.Mount+"/d", "trusted.overlay.opaque")
	assert.Error(t, err, "markers are hidden in the merged view")
}

func TestDirectoryRenameRecordsARedirectThatSurvivesRemount(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"a/b/f": "F", "z/": ""})
	m, err := uniontest.Start(l)
	require.NoError(t, err)
	require.NoError(t, os.Rename(l.Mount+"/a/b", l.Mount+"/z/moved"))
	require.NoError(t, m.Unmount())

	v, err := xattr.LGet(l.Upper+"/z/moved", "trusted.overlay.redirect")
	require.NoError(t, err)
	assert.Equal(t, "/a/b", string(v))
	assert.Equal(t, uint64(0), lstat(t, l.Upper+"/a/b").Rdev, "old name is whited out")

	uniontest.Mount(t, l)
	assert.Equal(t, "F", readFile(t, l.Mount+"/z/moved/f"))
	assert.Equal(t, []string{}, append([]string{}, names(t, l.Mount+"/a")...))
}

func TestRedirectDirOffRefusesLowerDirRenameWithEXDEV(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"a/f": "F"})
	uniontest.Mount(t, l, "redirect_dir=off")
	assert.Equal(t, unix.EXDEV, errnoOf(unix.Rename(l.Mount+"/a", l.Mount+"/b")))
	require.NoError(t, os.Mkdir(l.Mount+"/new", 0o755))
	assert.NoError(t, unix.Rename(l.Mount+"/new", l.Mount+"/renamed"), "a pure upper dir still moves")
}

// The move of a lower directory that cannot be recorded fails with EXDEV
// even onto a non-empty directory, as kernel overlay answers: the
// refusal comes before the target's emptiness is looked at.
func TestAnUnrecordableMoveOntoANonEmptyDirectoryIsEXDEVAsInKernelOverlay(t *testing.T) {
	fstest.RequireKernelOverlay(t)
	tree := fstest.Spec{"q/f": "F", "p/s/g": "G"}
	kernel := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, kernel.Lowers[0], tree)
	unmount, err := fstest.StartKernelOverlay(kernel, "redirect_dir=off", "index=off", "metacopy=off")
	require.NoError(t, err)
	defer unmount()
	assert.Equal(t, unix.EXDEV, errnoOf(unix.Rename(kernel.Mount+"/q", kernel.Mount+"/p/s")), "kernel overlay")
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], tree)
	uniontest.Mount(t, l, "redirect_dir=off")
	assert.Equal(t, unix.EXDEV, errnoOf(unix.Rename(l.Mount+"/q", l.Mount+"/p/s")), "unionmount")
	assert.Equal(t, "G", readFile(t, l.Mount+"/p/s/g"), "the target is untouched")
}

func TestInodeNumbersSurviveCopyUpAndRemount(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/f": "x", "g": "y"})
	m, err := uniontest.Start(l)
	require.NoError(t, err)
	before := map[string]uint64{}
	for _, p := range []string{"d", "d/f", "g"} {
		before[p] = lstat(t, l.Mount+"/"+p).Ino
	}
	require.NoError(t, os.WriteFile(l.Mount+"/d/f", []byte("changed"), 0o644))
	require.NoError(t, os.Chmod(l.Mount+"/g", 0o600))
	require.NoError(t, m.Unmount())
	uniontest.Mount(t, l)
	for p, ino := range before {
		assert.Equal(t, ino, lstat(t, l.Mount+"/"+p).Ino, p)
	}
}

func TestReadOnlyUnionRefusesChanges(t *testing.T) {
	root := t.TempDir()
	lower, mnt := filepath.Join(root, "lower"), filepath.Join(root, "mnt")
	require.NoError(t, os.Mkdir(lower, 0o755))
	require.NoError(t, os.Mkdir(mnt, 0o755))
	fstest.WriteTree(t, lower, fstest.Spec{"f": "x"})
	fstest.RequireFUSE(t)
	l := &fstest.Layers{Lowers: []string{lower}, Mount: mnt}
	m, err := uniontest.Start(l)
	require.NoError(t, err)
	defer func() { assert.NoError(t, m.Unmount()) }()
	assert.Equal(t, "x", readFile(t, mnt+"/f"))
	assert.Equal(t, unix.EROFS, errnoOf(os.WriteFile(mnt+"/f", []byte("y"), 0o644)))
	assert.Equal(t, unix.EROFS, errnoOf(os.Remove(mnt+"/f")))
}

func TestRacingWritersCopyUpOnce(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	const writers = 8
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": string(make([]byte, writers))})
	uniontest.Mount(t, l)
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			f, err := os.OpenFile(l.Mount+"/f", os.O_WRONLY, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{byte('a' + i)}, int64(i)); err != nil {
				errs <- err
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Equal(t, "abcdefgh", readFile(t, l.Mount+"/f"), "every writer's byte landed in the one upper copy")
	left, err := os.ReadDir(filepath.Join(l.Work, "work"))
	require.NoError(t, err)
	assert.Empty(t, left, "nothing is left in the work dir")
}

// Layers that kernel overlay wrote (chardev whiteouts, opaque dirs,
// redirects, xattr whiteouts) read the same through unionmount.
func TestReadsLayersWrittenByKernelOverlay(t *testing.T) {
	fstest.RequireKernelOverlay(t)
	build := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, build.Lowers[0], fstest.Spec{
		"gone": "x", "opaque/old": "o", "moved/f": "m", "keep/k": "k", "xw/visible": "v", "xw/hidden": "h",
	})
	unmount, err := fstest.StartKernelOverlay(build, kernelOverlayOptions()...)
	require.NoError(t, err)
	require.NoError(t, os.Remove(build.Mount+"/gone"))
	require.NoError(t, os.RemoveAll(build.Mount+"/opaque"))
	require.NoError(t, os.Mkdir(build.Mount+"/opaque", 0o755))
	require.NoError(t, os.WriteFile(build.Mount+"/opaque/new", []byte("n"), 0o644))
	require.NoError(t, os.Rename(build.Mount+"/moved", build.Mount+"/keep/renamed"))
	require.NoError(t, unmount())
	// A kernel 6.7+ xattr whiteout, as made by tools for unprivileged
	// layer stacks: an empty file marked, in a directory marked "x"
	// (holds xattr whiteouts, is not opaque).
	require.NoError(t, os.Mkdir(build.Upper+"/xw", 0o755))
	require.NoError(t, xattr.LSet(build.Upper+"/xw", "trusted.overlay.opaque", []byte("x")))
	require.NoError(t, os.WriteFile(build.Upper+"/xw/hidden", nil, 0o644))
	require.NoError(t, xattr.LSet(build.Upper+"/xw/hidden", "trusted.overlay.whiteout", nil))

	stack := []string{build.Upper, build.Lowers[0]}
	kernel := &fstest.Layers{Lowers: stack, Mount: filepath.Join(t.TempDir(), "k")}
	union := &fstest.Layers{Lowers: stack, Mount: filepath.Join(t.TempDir(), "u")}
	require.NoError(t, os.Mkdir(kernel.Mount, 0o755))
	require.NoError(t, os.Mkdir(union.Mount, 0o755))
	require.NoError(t, unix.Mount("overlay", kernel.Mount, "overlay", unix.MS_RDONLY,
		"lowerdir="+stack[0]+":"+stack[1]))
	defer unix.Unmount(kernel.Mount, 0)
	m, err := uniontest.Start(union)
	require.NoError(t, err)
	defer func() { assert.NoError(t, m.Unmount()) }()

	want, err := fstest.TakeSnapshot(kernel.Mount)
	require.NoError(t, err)
	got, err := fstest.TakeSnapshot(union.Mount)
	require.NoError(t, err)
	assert.Empty(t, fstest.Diff(want, got), "kernel overlay shows %s", want.Paths())
	assert.Equal(t, "m", readFile(t, union.Mount+"/keep/renamed/f"), "redirect followed")
	assert.NotContains(t, got, "xw/hidden")
	assert.Contains(t, got, "xw/visible")
}

// Readers of a lower file move to the upper copy at a copy-up, as with
// kernel overlay, where the daemon serves lower files (passthrough=upper,
// or no passthrough at all). Through passthrough the copy-up waits for
// them instead (passthrough_test.go).
func TestCopiedUpFileKeepsServingItsOpenReaders(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": "old data"})
	uniontest.Mount(t, l, "passthrough=upper")
	readers := make([]*os.File, 3)
	for i := range readers {
		f, err := os.Open(l.Mount + "/f")
		require.NoError(t, err)
		defer f.Close()
		readers[i] = f
	}
	for i := 0; i < 5; i++ {
		content := fmt.Sprintf("new data %d", i)
		require.NoError(t, os.WriteFile(l.Mount+"/f", []byte(content), 0o644))
		for _, r := range readers {
			buf := make([]byte, len(content))
			_, err := r.ReadAt(buf, 0)
			require.NoError(t, err)
			assert.Equal(t, content, string(buf))
		}
	}
}

func TestUpperFilesUsePassthroughWhenTheKernelOffersIt(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"lower": "from the lower layer"})
	m := uniontest.Mount(t, l)
	if !m.FS.Passthrough() {
		t.Skip("the kernel did not offer FUSE passthrough (needs root and Linux 6.9+)")
	}
	data := make([]byte, 4<<20)
	require.NoError(t, os.WriteFile(l.Mount+"/upper", data, 0o644))
	before := m.FS.DaemonReads()
	got, err := os.ReadFile(l.Mount + "/upper")
	require.NoError(t, err)
	assert.Equal(t, len(data), len(got))
	assert.Equal(t, before, m.FS.DaemonReads(), "upper reads bypass the daemon")

	// Lower files too (passthrough_test.go).
	assert.Equal(t, "from the lower layer", readFile(t, l.Mount+"/lower"))
	assert.Equal(t, before, m.FS.DaemonReads(), "lower reads bypass the daemon")
}

func TestContainerEngineOptionsChangeWhatIsShown(t *testing.T) {
	cases := []struct {
		opts  []string
		check func(t *testing.T, m string)
	}{
		{[]string{"squash_to_root"}, func(t *testing.T, m string) {
			st := lstat(t, m+"/d/f")
			assert.Equal(t, [2]uint32{0, 0}, [2]uint32{st.Uid, st.Gid})
		}},
		{[]string{"squash_to_root", "squash_to_uid=42"}, func(t *testing.T, m string) {
			st := lstat(t, m+"/d/f")
			assert.Equal(t, [2]uint32{42, 0}, [2]uint32{st.Uid, st.Gid}, "squash_to_uid wins over squash_to_root")
			f, err := os.Open(m + "/d/f")
			require.NoError(t, err)
			defer f.Close()
			var fst unix.Stat_t
			require.NoError(t, unix.Fstat(int(f.Fd()), &fst))
			assert.Equal(t, uint32(42), fst.Uid, "through an open file too")
		}},
		{[]string{"xattr_permissions=2", "squash_to_uid=42"}, func(t *testing.T, m string) {
			// The owner is recorded in an xattr, then squashed on
			// show: by name and through an open file alike.
			require.NoError(t, os.Lchown(m+"/d/f", 77, 88))
			st := lstat(t, m+"/d/f")
			assert.Equal(t, [2]uint32{42, 88}, [2]uint32{st.Uid, st.Gid})
			f, err := os.OpenFile(m+"/d/f", os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			// Forced past the kernel's cache, so the daemon answers
			// for the open file.
			var fst unix.Statx_t
			require.NoError(t, unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &fst))
			assert.Equal(t, [2]uint32{42, 88}, [2]uint32{fst.Uid, fst.Gid}, "through an open file too")
		}},
		{[]string{"squash_to_gid=7"}, func(t *testing.T, m string) {
			st := lstat(t, m+"/d/f")
			assert.Equal(t, [2]uint32{1234, 7}, [2]uint32{st.Uid, st.Gid})
		}},
		{[]string{"static_nlink"}, func(t *testing.T, m string) {
			require.NoError(t, os.Mkdir(m+"/d/sub", 0o755))
			assert.Equal(t, uint64(1), uint64(lstat(t, m+"/d").Nlink))
			assert.Equal(t, uint64(1), uint64(lstat(t, m+"/d/f").Nlink), "files keep their real count")
		}},
		{[]string{"noacl"}, func(t *testing.T, m string) {
			acl := []byte{2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff}
			err := unix.Setxattr(m+"/d/f", "system.posix_acl_access", acl, 0)
			assert.Equal(t, unix.EOPNOTSUPP, errnoOf(err))
		}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.opts, ","), func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/f": "x"})
			require.NoError(t, os.Lchown(filepath.Join(l.Lowers[0], "d/f"), 1234, 5678))
			uniontest.Mount(t, l, c.opts...)
			c.check(t, l.Mount)
		})
	}
	_, err := unionfs.ParseOptions([]string{"lower=/a,squash_to_uid=root"})
	assert.ErrorIs(t, err, unionfs.ErrBadOption)
}

// Reads that run past the end of a file come back short, from a lower
// file and from an upper one, through the page cache and with O_DIRECT
// (which sends the daemon the caller's own offsets and sizes).
func TestReadsPastTheEndComeBackShort(t *testing.T) {
	for _, mode := range []string{"passthrough=on", "passthrough=off"} {
		t.Run(mode, func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			content := make([]byte, 100_003) // not a whole number of pages
			for i := range content {
				content[i] = byte(i*7 + i/4096)
			}
			require.NoError(t, os.WriteFile(filepath.Join(l.Lowers[0], "lower"), content, 0o644))
			uniontest.Mount(t, l, mode)
			require.NoError(t, os.WriteFile(filepath.Join(l.Mount, "upper"), content, 0o644))
			for _, name := range []string{"lower", "upper"} {
				for _, flags := range []int{unix.O_RDONLY, unix.O_RDONLY | unix.O_DIRECT} {
					fd, err := unix.Open(filepath.Join(l.Mount, name), flags, 0)
					require.NoError(t, err)
					buf := make([]byte, 64<<10+4096)
					// O_DIRECT wants aligned buffers and offsets.
					aligned := buf[4096-int(uintptr(unsafe.Pointer(&buf[0]))%4096):][:64<<10]
					for _, off := range []int64{0, 65536, 98304, 102400} {
						n, err := unix.Pread(fd, aligned, off)
						require.NoError(t, err, "%s flags %#x off %d", name, flags, off)
						want := content[min(off, int64(len(content))):min(off+int64(len(aligned)), int64(len(content)))]
						assert.Equal(t, len(want), n, "%s flags %#x off %d", name, flags, off)
						assert.True(t, bytes.Equal(want, aligned[:n]), "%s flags %#x off %d: data differs", name, flags, off)
					}
					unix.Close(fd)
				}
			}
		})
	}
}
