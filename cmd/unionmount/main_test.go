package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pkg/xattr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// binary is the unionmount under test: $UNIONMOUNT_BIN (make test sets
// it), or one built for this run.
func binary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("UNIONMOUNT_BIN"); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), "unionmount")
	build := exec.Command("go", "build", "-o", out, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make builds it
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, msg)
	}
	return out
}

func mounted(dir string) bool {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Contains(string(data), " "+dir+" ")
}

func TestBadInputExitsTwoWithOneLineAndWritesNothing(t *testing.T) {
	fstest.RequireRoot(t)
	bin := binary(t)
	root := t.TempDir()
	dir := func(p string) string {
		full := filepath.Join(root, p)
		require.NoError(t, os.MkdirAll(full, 0o755))
		return full
	}
	lower, upper, mnt := dir("lower"), dir("upper"), dir("mnt")
	file := filepath.Join(root, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	full := dir("full")
	require.NoError(t, os.WriteFile(full+"/x", nil, 0o644))
	other := dir("otherfs")
	require.NoError(t, unix.Mount("tmpfs", other, "tmpfs", 0, ""))
	defer unix.Unmount(other, 0)

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"a missing lower dir", []string{"-o", "lower=" + root + "/nope,upper=" + upper, mnt}, "does not exist"},
		{"a lower that is a file", []string{"-o", "lower=" + file + ",upper=" + upper, mnt}, "not a directory"},
		{"an upper inside a lower", []string{"-o", "lower=" + lower + ",upper=" + dir("lower/up"), mnt}, "overlap"},
		{"a lower inside the upper", []string{"-o", "lower=" + dir("upper2/low") + ",upper=" + root + "/upper2", mnt}, "overlap"},
		{"a work dir inside a lower", []string{"-o", "lower=" + lower + ",upper=" + upper + ",work=" + dir("lower/w"), mnt}, "overlap"},
		{"a work dir on another filesystem", []string{"-o", "lower=" + lower + ",upper=" + upper + ",work=" + other, mnt}, "another filesystem"},
		{"a non-empty mount point", []string{"-o", "lower=" + lower + ",upper=" + upper, full}, "not empty"},
		{"a missing mount point", []string{"-o", "lower=" + lower + ",upper=" + upper, root + "/nomnt"}, "mount point"},
		{"an unknown option", []string{"-o", "lower=" + lower + ",upper=" + upper + ",frobnicate", mnt}, "unknown option"},
		{"no lower at all", []string{"-o", "upper=" + upper, mnt}, "no lower"},
		{"a bad redirect_dir value", []string{"-o", "lower=" + lower + ",redirect_dir=maybe", mnt}, "redirect_dir"},
		{"an unknown flag", []string{"--frobnicate", mnt}, "unknown flag"},
		{"no mount point", []string{"-o", "lower=" + lower}, "MOUNTPOINT"},
		{"an aufs branch of an unknown permission", []string{"-o", "br=" + upper + "=rw:" + lower + "=maybe", mnt}, `permission "maybe"`},
		{"aufs branches mixed with lowerdir", []string{"-o", "br=" + upper + "=rw:" + lower + "=ro,lowerdir=" + lower, mnt}, "cannot be mixed"},
		{"a bad uidmapping", []string{"-o", "lower=" + lower + ",uidmapping=0:1000", mnt}, "uidmapping"},
		{"convert without --to", []string{"convert", lower}, "--to"},
		{"convert of a missing dir", []string{"convert", "--to", "aufs", root + "/nope"}, "nope"},
		{"apply of a missing tarball", []string{"apply", root + "/nope.tar", lower}, "nope.tar"},
		{"apply onto a file", []string{"apply", file, file}, "not a directory"},
		{"apply with whiteout=auto", []string{"apply", "--whiteout", "auto", file, lower}, "--whiteout"},
		{"apply --flatten with a whiteout format", []string{"apply", "--flatten", "--whiteout", "aufs", file, lower}, "--flatten"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(bin, c.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "want a failure, got %v", err)
			assert.Equal(t, 2, exit.ExitCode())
			msg := strings.TrimSpace(stderr.String())
			assert.Contains(t, msg, c.want)
			assert.Equal(t, 1, strings.Count(msg, "\n")+1, "one line: %q", msg)
			assert.False(t, mounted(mnt), "nothing mounted")
			_, err = os.Stat(filepath.Join(root, ".upper.unionmount-work"))
			assert.True(t, os.IsNotExist(err), "no work dir written")
		})
	}
}

func layers(t *testing.T) *fstest.Layers {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": "lower data", "d/g": "g"})
	return l
}

func waitUnmounted(t *testing.T, dir string) {
	t.Helper()
	assert.True(t, fstest.WaitFor(fstest.Patience, func() bool { return !mounted(dir) }), "%s still mounted", dir)
}

func TestBackgroundMountIsReadyWhenCommandReturnsAndFusermountStopsIt(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	l := layers(t)
	out, err := exec.Command(bin, "-o", "lower="+l.Lowers[0]+",upper="+l.Upper+",work="+l.Work, l.Mount).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.True(t, mounted(l.Mount), "mounted when the command returns")
	data, err := os.ReadFile(l.Mount + "/f")
	require.NoError(t, err)
	assert.Equal(t, "lower data", string(data))
	require.NoError(t, os.WriteFile(l.Mount+"/new", []byte("x"), 0o644))
	out, err = exec.Command("fusermount3", "-u", l.Mount).CombinedOutput()
	require.NoError(t, err, "%s", out)
	waitUnmounted(t, l.Mount)
	assert.FileExists(t, l.Upper+"/new")
}

func TestMountHelperForm(t *testing.T) {
	fstest.RequireFUSE(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	bin := binary(t)
	l := layers(t)
	// mount.fuse3 runs unionmount from the default PATH: show it there
	// in a private mount namespace only.
	script := `set -e
mount --make-rprivate /
mount -t tmpfs bin /usr/local/sbin
ln -s "$BIN" /usr/local/sbin/unionmount
mount -t fuse.unionmount none "$MNT" -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK,noatime"
grep " $MNT " /proc/self/mounts
cat "$MNT/f"
umount "$MNT"
`
	cmd := exec.Command("unshare", "-m", "bash", "-c", script)
	cmd.Env = append(os.Environ(), "BIN="+bin, "MNT="+l.Mount, "LOWER="+l.Lowers[0], "UPPER="+l.Upper, "WORK="+l.Work)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "fuse.unionmount")
	assert.Contains(t, string(out), "lower data")
}

func TestSigtermUnmountsCleanly(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	l := layers(t)
	cmd := exec.Command(bin, "-f", "-o", "lower="+l.Lowers[0]+",upper="+l.Upper+",work="+l.Work, l.Mount)
	require.NoError(t, cmd.Start())
	require.True(t, fstest.WaitFor(fstest.Patience, func() bool { return mounted(l.Mount) }), "mounted")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait(), "exit status 0 after SIGTERM")
	waitUnmounted(t, l.Mount)
}

// A crash at any copy-up point leaves the old file (or a whole copy),
// never a half one, and a remount clears the work dir. With metacopy=on
// the same holds for the copy of the data of a metadata-only upper file:
// it stays metadata-only, or becomes a whole copy.
func TestCrashDuringCopyUpLeavesOldOrNewState(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	for _, metacopy := range []bool{false, true} {
		for _, point := range unionfs.CrashPoints() {
			name := point
			if metacopy {
				name = "metacopy/" + point
			}
			t.Run(name, func(t *testing.T) {
				crashDuringCopyUp(t, bin, point, metacopy)
			})
		}
	}
}

func crashDuringCopyUp(t *testing.T, bin, point string, metacopy bool) {
	l := layers(t)
	opts := "lower=" + l.Lowers[0] + ",upper=" + l.Upper + ",work=" + l.Work
	wantMode := uint32(0o644)
	if metacopy {
		fstest.RequireRoot(t) // trusted.* xattrs
		opts += ",metacopy=on"
		m, err := uniontest.Start(l, "metacopy=on")
		require.NoError(t, err)
		require.NoError(t, os.Chmod(l.Mount+"/f", 0o600))
		require.NoError(t, m.Unmount())
		wantMode = 0o600
		_, err = xattr.LGet(l.Upper+"/f", "trusted.overlay.metacopy")
		require.NoError(t, err, "metadata-only copy before the crash")
	}
	cmd := exec.Command(bin, "-f", "-o", opts, l.Mount)
	cmd.Env = append(os.Environ(), "UNIONMOUNT_CRASH_AT="+point)
	require.NoError(t, cmd.Start())
	require.True(t, fstest.WaitFor(fstest.Patience, func() bool { return mounted(l.Mount) }), "mounted")
	stop, aborted := fstest.AbortAfter(l.Mount, fstest.Patience)
	f, err := os.OpenFile(l.Mount+"/f", os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		f.WriteString(" appended")
		f.Close()
	}
	err = cmd.Wait()
	stop()
	require.False(t, aborted(), "the crashed server did not go away: its FUSE connection had to be aborted")
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "server crashed: %v", err)
	assert.Equal(t, 86, exit.ExitCode(), "stopped at the crash point")
	require.NoError(t, unix.Unmount(l.Mount, unix.MNT_DETACH))

	_, markErr := xattr.LGet(l.Upper+"/f", "trusted.overlay.metacopy")
	if data, err := os.ReadFile(l.Upper + "/f"); err == nil && markErr != nil {
		assert.Equal(t, "lower data", string(data), "an upper copy is whole")
	} else if err != nil {
		assert.True(t, os.IsNotExist(err))
	}
	extra := []string{}
	if metacopy {
		extra = append(extra, "metacopy=on")
	}
	uniontest.Mount(t, l, extra...)
	data, err := os.ReadFile(l.Mount + "/f")
	require.NoError(t, err)
	assert.Equal(t, "lower data", string(data))
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(l.Mount+"/f", &st))
	assert.Equal(t, wantMode, st.Mode&0o7777)
	left, err := os.ReadDir(filepath.Join(l.Work, "work"))
	require.NoError(t, err)
	assert.Empty(t, left, "remount cleared the work dir")
}

// aufs branch syntax: the leftmost branch is the upper, and a removal
// leaves an aufs whiteout file there.
func TestAufsBranchesMountWithAufsWhiteouts(t *testing.T) {
	fstest.RequireFUSE(t)
	bin := binary(t)
	root := t.TempDir()
	top, mid, bottom, mnt := root+"/top", root+"/mid", root+"/bottom", root+"/mnt"
	fstest.WriteTree(t, bottom, fstest.Spec{"f": "bottom f", "g": "bottom g"})
	fstest.WriteTree(t, mid, fstest.Spec{"g": "mid g"})
	for _, d := range []string{top, mnt} {
		require.NoError(t, os.Mkdir(d, 0o755))
	}
	out, err := exec.Command(bin, "-o", "br="+top+"=rw:"+mid+"=ro+wh:"+bottom+"=ro", mnt).CombinedOutput()
	require.NoError(t, err, "%s", out)
	defer exec.Command("fusermount3", "-u", mnt).Run()
	data, err := os.ReadFile(mnt + "/g")
	require.NoError(t, err)
	assert.Equal(t, "mid g", string(data), "the left branch wins")
	require.NoError(t, os.Remove(mnt+"/f"))
	assert.FileExists(t, top+"/.wh.f")
	_, err = os.Stat(mnt + "/f")
	assert.True(t, os.IsNotExist(err))
	out, err = exec.Command("fusermount3", "-u", mnt).CombinedOutput()
	require.NoError(t, err, "%s", out)
	waitUnmounted(t, mnt)
	ents, err := os.ReadDir(root)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{"bottom", "mid", "mnt", "top"}, names, "no work dir left beside the branch")
	assert.DirExists(t, top+"/.wh..wh.unionmount", "aufs-style housekeeping inside the writable branch")
}

// apply and convert from the command line: a layer tarball with a
// whiteout goes in as aufs, converts to overlay, and reports what it did.
func TestApplyAndConvertCommands(t *testing.T) {
	fstest.RequireRoot(t)
	bin := binary(t)
	root := t.TempDir()
	src, layer := root+"/src", root+"/layer"
	fstest.WriteTree(t, src, fstest.Spec{"etc/.wh.old": "", "etc/new": "n"})
	require.NoError(t, os.Mkdir(layer, 0o755))
	tarball := root + "/layer.tar.gz"
	out, err := exec.Command("tar", "-czf", tarball, "-C", src, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)

	out, err = exec.Command(bin, "apply", "--whiteout", "aufs", tarball, layer).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "1 whiteouts")
	assert.FileExists(t, layer+"/etc/.wh.old")

	out, err = exec.Command(bin, "convert", "--to", "overlay", layer).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "1 whiteouts and 0 opaque markers rewritten as chardev")
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(layer+"/etc/old", &st))
	assert.Equal(t, uint32(unix.S_IFCHR), st.Mode&unix.S_IFMT)
	assert.NoFileExists(t, layer+"/etc/.wh.old")

	// --flatten onto a full tree: the whiteout deletes, nothing is left
	// of the format.
	tree := root + "/tree"
	fstest.WriteTree(t, tree, fstest.Spec{"etc/old": "old", "etc/keep": "k"})
	out, err = exec.Command(bin, "apply", "--flatten", tarball, tree).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "1 whiteouts and 0 opaque dirs deleted what they hide")
	assert.NoFileExists(t, tree+"/etc/old")
	assert.NoFileExists(t, tree+"/etc/.wh.old")
	assert.FileExists(t, tree+"/etc/keep")
	assert.FileExists(t, tree+"/etc/new")

	// A traversal is refused with exit 2 and nothing written.
	evil := root + "/evil.tar"
	out, err = exec.Command("tar", "-cf", evil, "-C", src, "--transform", "s,^./etc,../../escaped,", "./etc/new").CombinedOutput()
	require.NoError(t, err, "%s", out)
	empty := root + "/empty"
	require.NoError(t, os.Mkdir(empty, 0o755))
	cmd := exec.Command(bin, "apply", evil, empty)
	out, err = cmd.CombinedOutput()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "want a refusal: %s", out)
	assert.Equal(t, 2, exit.ExitCode())
	assert.Contains(t, string(out), "climbs out")
	names, _ := os.ReadDir(empty)
	assert.Empty(t, names)
}

// TestLayerPathsAsContainersStorageWritesThem mounts, as containers/storage
// does for the layers above an id-mapped one, with lowerdirs of the form
// l/LINK/../diff1 relative to the overlay dir, LINK a symlink to
// ../ID/diff: kernel overlay and unionmount both follow LINK before "..".
func TestLayerPathsAsContainersStorageWritesThem(t *testing.T) {
	fstest.RequireFUSE(t)
	fstest.RequireKernelOverlay(t)
	bin := binary(t)
	root := t.TempDir()
	fstest.WriteTree(t, root, fstest.Spec{
		"ID/diff/": "", "ID/diff1/f": "from ID/diff1", "l/diff1/f": "from l/diff1",
		"upper/": "", "work/": "", "kmnt/": "", "umnt/": "",
	})
	require.NoError(t, os.Symlink("../ID/diff", filepath.Join(root, "l/LINK")))
	opts := "lowerdir=l/LINK/../diff1:l/LINK,upperdir=upper,workdir=work"
	kernel := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts+",index=off", "kmnt")
	kernel.Dir = root
	out, err := kernel.CombinedOutput()
	require.NoError(t, err, "%s", out)
	defer unix.Unmount(filepath.Join(root, "kmnt"), 0)
	data, err := os.ReadFile(filepath.Join(root, "kmnt/f"))
	require.NoError(t, err)
	assert.Equal(t, "from ID/diff1", string(data), "kernel overlay: the reference")
	require.NoError(t, unix.Unmount(filepath.Join(root, "kmnt"), 0))

	union := exec.Command(bin, "-o", opts, "umnt")
	union.Dir = root
	out, err = union.CombinedOutput()
	require.NoError(t, err, "%s", out)
	data, err = os.ReadFile(filepath.Join(root, "umnt/f"))
	assert.NoError(t, err)
	assert.Equal(t, "from ID/diff1", string(data), "with l/diff1 there too, a path cleaned as text mounts the wrong layer")
	out, err = exec.Command("fusermount3", "-u", filepath.Join(root, "umnt")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	waitUnmounted(t, filepath.Join(root, "umnt"))
}
