package unionfs_test

import (
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// branchDirs makes the named branch dirs and a mount point in a fresh
// temporary directory, returning their paths and the mount point.
func branchDirs(t *testing.T, names ...string) (map[string]string, string) {
	t.Helper()
	root := t.TempDir()
	dirs := map[string]string{}
	for _, n := range names {
		dirs[n] = filepath.Join(root, n)
		require.NoError(t, os.Mkdir(dirs[n], 0o755))
	}
	mnt := filepath.Join(root, "aufs")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	return dirs, mnt
}

func write(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func listNames(t *testing.T, dir string) []string {
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

// The aufs tutorial's steps, exactly: a read-only branch on top of a
// writable one.
func TestAufsTutorialReadOnlyBranchOverWritable(t *testing.T) {
	d, mnt := branchDirs(t, "test1", "test2")
	write(t, filepath.Join(d["test1"], "file1"), "file1\n")
	write(t, filepath.Join(d["test2"], "file2"), "file2\n")
	uniontest.MountAt(t, mnt, "br="+d["test1"]+"=ro:"+d["test2"]+"=rw")

	assert.Equal(t, []string{"file1", "file2"}, listNames(t, mnt))

	// file1 lives on the read-only branch and no writable branch lies
	// above it.
	err := os.WriteFile(filepath.Join(mnt, "file1"), []byte("hello\n"), 0o644)
	assert.ErrorIs(t, err, syscall.EROFS)
	assert.Equal(t, "file1\n", read(t, filepath.Join(d["test1"], "file1")))

	// file2 lives on the writable branch: rewritten in place.
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "file2"), []byte("hello\n"), 0o644))
	assert.Equal(t, "hello\n", read(t, filepath.Join(d["test2"], "file2")))
	assert.Equal(t, "hello\n", read(t, filepath.Join(mnt, "file2")))

	// A new name goes to the writable branch (tdp).
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "new"), []byte("new\n"), 0o644))
	assert.Equal(t, "new\n", read(t, filepath.Join(d["test2"], "new")))

	// Nothing is left beside the branch, and its housekeeping never
	// shows.
	assert.Equal(t, []string{"aufs", "test1", "test2"}, listNames(t, filepath.Dir(d["test1"])))
	assert.Equal(t, []string{"file1", "file2", "new"}, listNames(t, mnt))
}

// After the tutorial's "mv test1/file1 test1/file2" underneath the mount,
// the leftmost branch wins.
func TestAufsTutorialLeftmostBranchWins(t *testing.T) {
	d, mnt := branchDirs(t, "test1", "test2")
	write(t, filepath.Join(d["test1"], "file1"), "file1\n")
	write(t, filepath.Join(d["test2"], "file2"), "file2\n")
	require.NoError(t, os.Rename(filepath.Join(d["test1"], "file1"), filepath.Join(d["test1"], "file2")))
	uniontest.MountAt(t, mnt, "br="+d["test1"]+"=ro:"+d["test2"]+"=rw")
	assert.Equal(t, "file1\n", read(t, filepath.Join(mnt, "file2")))
	// It is on the read-only branch now, with no writable one above.
	err := os.WriteFile(filepath.Join(mnt, "file2"), []byte("x"), 0o644)
	assert.ErrorIs(t, err, syscall.EROFS)
}

// Removing a name: from its writable branch, with a whiteout there when
// a branch below still shows it; a name on a read-only branch with no
// writable branch above cannot be removed.
func TestAufsBranchesWhiteoutOnTheBranchThatHides(t *testing.T) {
	d, mnt := branchDirs(t, "top", "rw", "ro")
	write(t, filepath.Join(d["top"], "only-top"), "t")
	write(t, filepath.Join(d["rw"], "both"), "rw")
	write(t, filepath.Join(d["ro"], "both"), "ro")
	write(t, filepath.Join(d["ro"], "low"), "low")
	write(t, filepath.Join(d["rw"], "mine"), "mine")
	uniontest.MountAt(t, mnt, "br="+d["top"]+"=ro:"+d["rw"]+"=rw:"+d["ro"]+"=ro+wh")

	assert.Equal(t, "rw", read(t, filepath.Join(mnt, "both")))
	require.NoError(t, os.Remove(filepath.Join(mnt, "both")))
	assert.NoFileExists(t, filepath.Join(mnt, "both"), "the whiteout on rw hides ro's copy")
	assert.FileExists(t, filepath.Join(d["rw"], ".wh.both"))
	assert.FileExists(t, filepath.Join(d["ro"], "both"), "the read-only branch is untouched")

	require.NoError(t, os.Remove(filepath.Join(mnt, "low")))
	assert.FileExists(t, filepath.Join(d["rw"], ".wh.low"), "the writable branch above hides it")
	assert.FileExists(t, filepath.Join(d["ro"], "low"))

	require.NoError(t, os.Remove(filepath.Join(mnt, "mine")))
	assert.NoFileExists(t, filepath.Join(d["rw"], "mine"))
	assert.NoFileExists(t, filepath.Join(d["rw"], ".wh.mine"), "nothing below to hide")

	assert.ErrorIs(t, os.Remove(filepath.Join(mnt, "only-top")), syscall.EROFS)
	assert.Equal(t, []string{"only-top"}, listNames(t, mnt))

	// A directory merged from both: emptied, then removed, leaving a
	// whiteout on the writable branch.
	write(t, filepath.Join(d["rw"], "dir/mine"), "m")
	write(t, filepath.Join(d["ro"], "dir/theirs"), "t")
	require.NoError(t, os.Remove(filepath.Join(mnt, "dir/mine")))
	require.NoError(t, os.Remove(filepath.Join(mnt, "dir/theirs")))
	assert.FileExists(t, filepath.Join(d["rw"], "dir/.wh.theirs"))
	require.NoError(t, os.Remove(filepath.Join(mnt, "dir")))
	assert.NoDirExists(t, filepath.Join(d["rw"], "dir"))
	assert.FileExists(t, filepath.Join(d["rw"], ".wh.dir"))
	assert.DirExists(t, filepath.Join(d["ro"], "dir"))

	// A name made again over its whiteout shows the new object.
	write(t, filepath.Join(mnt, "both"), "again")
	assert.Equal(t, "again", read(t, filepath.Join(d["rw"], "both")))
	assert.NoFileExists(t, filepath.Join(d["rw"], ".wh.both"))
	require.NoError(t, os.Mkdir(filepath.Join(mnt, "low"), 0o755))
	assert.Equal(t, []string{"both", "low", "only-top"}, listNames(t, mnt))
}

// A write to a file on a read-only branch copies it up to the topmost
// writable branch above it, its parent dirs first.
func TestAufsBranchesCopyUpToTheWritableBranchAbove(t *testing.T) {
	d, mnt := branchDirs(t, "rw1", "ro1", "rw2", "ro2")
	write(t, filepath.Join(d["ro2"], "a/b/deep"), "deep")
	write(t, filepath.Join(d["ro1"], "mid"), "mid")
	write(t, filepath.Join(d["rw2"], "low-rw"), "low-rw")
	uniontest.MountAt(t, mnt, "br="+d["rw1"]+"=rw:"+d["ro1"]+"=ro:"+d["rw2"]+"=rw:"+d["ro2"]+"=ro")

	f, err := os.OpenFile(filepath.Join(mnt, "a/b/deep"), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString("+more")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	assert.Equal(t, "deep+more", read(t, filepath.Join(d["rw1"], "a/b/deep")), "to the topmost writable branch above")
	assert.Equal(t, "deep", read(t, filepath.Join(d["ro2"], "a/b/deep")))
	assert.NoFileExists(t, filepath.Join(d["rw2"], "a/b/deep"))

	require.NoError(t, os.Chmod(filepath.Join(mnt, "mid"), 0o600))
	st, err := os.Stat(filepath.Join(d["rw1"], "mid"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	// A file on a writable branch is changed where it is.
	require.NoError(t, os.Truncate(filepath.Join(mnt, "low-rw"), 3))
	assert.Equal(t, "low", read(t, filepath.Join(d["rw2"], "low-rw")))
	assert.NoFileExists(t, filepath.Join(d["rw1"], "low-rw"))

	// A new file in a directory only the read-only branches hold: tdp
	// copies the parent to the topmost writable branch above it.
	write(t, filepath.Join(mnt, "a/b/new"), "n")
	assert.Equal(t, "n", read(t, filepath.Join(d["rw1"], "a/b/new")))
	assert.Equal(t, []string{"deep", "new"}, listNames(t, filepath.Join(mnt, "a/b")))
}

// Renames within a writable branch move the file there; others are
// EXDEV (and mv copies instead).
func TestAufsBranchesRename(t *testing.T) {
	d, mnt := branchDirs(t, "ro", "rw", "base")
	write(t, filepath.Join(d["rw"], "f"), "f")
	write(t, filepath.Join(d["base"], "f"), "base")
	write(t, filepath.Join(d["ro"], "r"), "r")
	uniontest.MountAt(t, mnt, "br="+d["ro"]+"=ro:"+d["rw"]+"=rw:"+d["base"]+"=ro")

	require.NoError(t, os.Rename(filepath.Join(mnt, "f"), filepath.Join(mnt, "g")))
	assert.Equal(t, "f", read(t, filepath.Join(d["rw"], "g")))
	assert.Equal(t, "f", read(t, filepath.Join(mnt, "g")))
	assert.NoFileExists(t, filepath.Join(mnt, "f"), "a whiteout hides base's f")
	assert.FileExists(t, filepath.Join(d["rw"], ".wh.f"))

	err := os.Rename(filepath.Join(mnt, "r"), filepath.Join(mnt, "s"))
	assert.ErrorIs(t, err, syscall.EXDEV)
	assert.Equal(t, []string{"g", "r"}, listNames(t, mnt))
}

// Two writable branches with files in each: each file is changed on its
// own branch.
func TestAufsBranchesTwoWritable(t *testing.T) {
	d, mnt := branchDirs(t, "a", "b")
	write(t, filepath.Join(d["a"], "fa"), "a")
	write(t, filepath.Join(d["b"], "fb"), "b")
	write(t, filepath.Join(d["b"], "dir/x"), "x")
	uniontest.MountAt(t, mnt, "br="+d["a"]+"=rw:"+d["b"]+"=rw")
	write(t, filepath.Join(mnt, "fa"), "A")
	write(t, filepath.Join(mnt, "fb"), "B")
	assert.Equal(t, "A", read(t, filepath.Join(d["a"], "fa")))
	assert.Equal(t, "B", read(t, filepath.Join(d["b"], "fb")))
	assert.NoFileExists(t, filepath.Join(d["a"], "fb"))
	// tdp: the parent exists only on b.
	write(t, filepath.Join(mnt, "dir/y"), "y")
	assert.Equal(t, "y", read(t, filepath.Join(d["b"], "dir/y")))
	require.NoError(t, os.Link(filepath.Join(mnt, "dir/y"), filepath.Join(mnt, "dir/z")))
	assert.Equal(t, "y", read(t, filepath.Join(d["b"], "dir/z")))
	// Each writable branch keeps its housekeeping inside, unseen.
	for _, b := range []string{"a", "b"} {
		assert.DirExists(t, filepath.Join(d[b], ".wh..wh.unionmount"))
	}
	assert.Equal(t, []string{"dir", "fa", "fb"}, listNames(t, mnt))
}

// Writers racing on one file of a read-only branch copy it up once, and
// every write lands in the one copy; racing creators of one new name
// make it once.
func TestAufsBranchesRacingCopyUpsAndCreates(t *testing.T) {
	d, mnt := branchDirs(t, "rw", "ro")
	write(t, filepath.Join(d["ro"], "dir/shared"), string(make([]byte, 64)))
	uniontest.MountAt(t, mnt, "br="+d["rw"]+"=rw:"+d["ro"]+"=ro")
	const writers = 8
	var wg sync.WaitGroup
	created := make(chan error, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			f, err := os.OpenFile(filepath.Join(mnt, "dir/shared"), os.O_WRONLY, 0)
			if !assert.NoError(t, err) {
				return
			}
			_, err = f.WriteAt([]byte{byte('a' + i)}, int64(i))
			assert.NoError(t, err)
			assert.NoError(t, f.Close())
			f, err = os.OpenFile(filepath.Join(mnt, "dir/new"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err == nil {
				f.Close()
			}
			created <- err
		}(i)
	}
	wg.Wait()
	close(created)
	ok := 0
	for err := range created {
		if err == nil {
			ok++
		} else {
			assert.ErrorIs(t, err, os.ErrExist)
		}
	}
	assert.Equal(t, 1, ok, "one creator wins")
	got := read(t, filepath.Join(d["rw"], "dir/shared"))
	assert.Equal(t, "abcdefgh", got[:writers], "every write is in the one copy")
	assert.Equal(t, []string{"new", "shared"}, listNames(t, filepath.Join(mnt, "dir")))
}

// Docker's aufs driver's mount data, as it writes it: the container's
// writable layer on top, image layers below with aufs whiteouts.
func TestAufsDockerMountData(t *testing.T) {
	d, mnt := branchDirs(t, "rw", "ro1", "ro2", "ro3")
	write(t, filepath.Join(d["ro3"], "etc/os-release"), "base")
	write(t, filepath.Join(d["ro3"], "etc/gone"), "gone")
	write(t, filepath.Join(d["ro2"], "etc/.wh.gone"), "")
	write(t, filepath.Join(d["ro1"], "etc/os-release"), "updated")
	data := "br:" + d["rw"] + "=rw:" + d["ro1"] + "=ro+wh:" + d["ro2"] + "=ro+wh:" + d["ro3"] + "=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1"
	uniontest.MountAt(t, mnt, data)
	assert.Equal(t, []string{"os-release"}, listNames(t, filepath.Join(mnt, "etc")))
	assert.Equal(t, "updated", read(t, filepath.Join(mnt, "etc/os-release")))
	require.NoError(t, os.Remove(filepath.Join(mnt, "etc/os-release")))
	assert.FileExists(t, filepath.Join(d["rw"], "etc/.wh.os-release"), "an aufs whiteout in the container's layer")
	assert.Empty(t, listNames(t, filepath.Join(mnt, "etc")))

	// aufs keeps its housekeeping inside the writable branch: nothing
	// is left beside it, and nothing of it shows through the mount.
	assert.Equal(t, []string{"aufs", "ro1", "ro2", "ro3", "rw"}, listNames(t, filepath.Dir(d["rw"])))
	assert.DirExists(t, filepath.Join(d["rw"], ".wh..wh.unionmount/work"))
	assert.Equal(t, []string{"etc"}, listNames(t, mnt))
	_, err := os.Lstat(filepath.Join(mnt, ".wh..wh.unionmount"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	// Renames and copy-ups stage there (the kernel-overlay code path).
	require.NoError(t, os.Rename(filepath.Join(mnt, "etc"), filepath.Join(mnt, "etc2")))
	write(t, filepath.Join(mnt, "etc2/new"), "n")
	assert.Equal(t, []string{"new"}, listNames(t, filepath.Join(mnt, "etc2")))
	assert.Equal(t, []string{"etc2"}, listNames(t, mnt))
}

// A copy-up keeps the file's inode number, across a fresh lookup too
// (udba=reval looks names up on every access).
func TestAufsBranchesCopyUpKeepsInodeNumber(t *testing.T) {
	d, mnt := branchDirs(t, "rw", "ro", "rw2")
	write(t, filepath.Join(d["ro"], "f"), "f")
	uniontest.MountAt(t, mnt, "br="+d["rw"]+"=rw:"+d["ro"]+"=ro:"+d["rw2"]+"=rw")
	ino := func() uint64 {
		st, err := os.Stat(filepath.Join(mnt, "f"))
		require.NoError(t, err)
		return st.Sys().(*syscall.Stat_t).Ino
	}
	before := ino()
	write(t, filepath.Join(mnt, "f"), "changed")
	assert.FileExists(t, filepath.Join(d["rw"], "f"))
	assert.Equal(t, before, ino())
}
