package unionfs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/unionfs"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// Branches appended to a live mount show at once, even names the kernel
// had cached as absent and listings it had cached (udba=none caches for
// an hour), and a branch in use cannot be removed.
func TestLiveBranchAddAndDel(t *testing.T) {
	for _, shape := range []string{"rw on top", "branched"} {
		t.Run(shape, func(t *testing.T) {
			d, mnt := branchDirs(t, "ro0", "rw", "ro1", "ro2", "ro3")
			write(t, filepath.Join(d["ro1"], "etc/one"), "1")
			write(t, filepath.Join(d["ro2"], "etc/two"), "2")
			write(t, filepath.Join(d["ro2"], "etc/one"), "hidden by ro1")
			write(t, filepath.Join(d["ro3"], "three"), "3")
			br := "br:" + d["rw"] + "=rw:" + d["ro1"] + "=ro+wh"
			if shape == "branched" {
				br = "br:" + d["ro0"] + "=ro:" + d["rw"] + "=rw:" + d["ro1"] + "=ro+wh"
			}
			m := uniontest.MountAt(t, mnt, br+",udba=none")
			assert.Equal(t, []string{"one"}, listNames(t, filepath.Join(mnt, "etc")))
			_, err := os.Stat(filepath.Join(mnt, "etc/two"))
			require.ErrorIs(t, err, os.ErrNotExist, "cached as absent")
			_, err = os.Stat(filepath.Join(mnt, "three"))
			require.ErrorIs(t, err, os.ErrNotExist)

			require.NoError(t, m.FS.AddBranch(unionfs.Branch{Path: d["ro2"], Mode: "ro", Attrs: "wh"}, false))
			require.NoError(t, m.FS.AddBranch(unionfs.Branch{Path: d["ro3"], Mode: "ro", Attrs: "wh"}, false))
			assert.Equal(t, "2", read(t, filepath.Join(mnt, "etc/two")))
			assert.Equal(t, "1", read(t, filepath.Join(mnt, "etc/one")), "the branch above still wins")
			assert.Equal(t, []string{"one", "two"}, listNames(t, filepath.Join(mnt, "etc")))
			assert.Equal(t, "3", read(t, filepath.Join(mnt, "three")))

			err = m.FS.AddBranch(unionfs.Branch{Path: d["ro0"], Mode: "rw"}, false)
			assert.ErrorIs(t, err, unionfs.ErrBadOption, "writable branches are not added live")

			f, err := os.Open(filepath.Join(mnt, "etc/two"))
			require.NoError(t, err)
			err = m.FS.DelBranch(d["ro2"])
			assert.ErrorIs(t, err, unix.EBUSY, "a file on it is open")
			assert.Contains(t, fmt.Sprint(err), "etc/two")
			require.NoError(t, f.Close())
			require.NoError(t, m.FS.DelBranch(d["ro2"]))
			_, err = os.Stat(filepath.Join(mnt, "etc/two"))
			assert.ErrorIs(t, err, os.ErrNotExist)
			assert.Equal(t, []string{"one"}, listNames(t, filepath.Join(mnt, "etc")))
			assert.Equal(t, "3", read(t, filepath.Join(mnt, "three")))
			assert.Error(t, m.FS.DelBranch(d["rw"]), "the writable branch stays")
		})
	}
}

// A branch prepended to a union with no upper goes on top: its files
// win over the ones the kernel has cached; with a writable upper on top
// it is refused.
func TestLiveBranchPrepend(t *testing.T) {
	d, mnt := branchDirs(t, "new", "ro1", "rw")
	write(t, filepath.Join(d["ro1"], "etc/one"), "1")
	write(t, filepath.Join(d["new"], "etc/one"), "new")
	write(t, filepath.Join(d["new"], "top"), "top")
	m := uniontest.MountAt(t, mnt, "br="+d["ro1"]+"=ro:"+d["rw"]+"=rw,udba=none")
	assert.Equal(t, "1", read(t, filepath.Join(mnt, "etc/one")))
	_, err := os.Stat(filepath.Join(mnt, "top"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, m.FS.AddBranch(unionfs.Branch{Path: d["new"], Mode: "ro"}, true))
	assert.Equal(t, "new", read(t, filepath.Join(mnt, "etc/one")))
	assert.Equal(t, "top", read(t, filepath.Join(mnt, "top")))
	assert.Equal(t, []string{"etc", "top"}, listNames(t, mnt))
	// etc lies on read-only branches only, none writable above it: EROFS,
	// as aufs's tdp answers.
	assert.ErrorIs(t, os.WriteFile(filepath.Join(mnt, "etc/made"), nil, 0o644), unix.EROFS)
	// Writes still go to the writable branch; the new top is read-only.
	write(t, filepath.Join(mnt, "made"), "m")
	assert.FileExists(t, filepath.Join(d["rw"], "made"))
	assert.ErrorIs(t, os.WriteFile(filepath.Join(mnt, "top"), nil, 0o644), unix.EROFS)

	d2, mnt2 := branchDirs(t, "rw", "ro", "new")
	m2 := uniontest.MountAt(t, mnt2, "br="+d2["rw"]+"=rw:"+d2["ro"]+"=ro")
	err = m2.FS.AddBranch(unionfs.Branch{Path: d2["new"], Mode: "ro"}, true)
	assert.ErrorIs(t, err, unionfs.ErrBadOption)
	assert.Contains(t, fmt.Sprint(err), "stays on top")
}

// Readers racing on the same names while a branch comes and goes see
// one stack or the other, never a fault; a removal they hold up (a
// listing with READDIRPLUS makes the kernel hold nodes of the branch's
// names again right after they were dropped) is refused with EBUSY.
func TestLiveBranchChangesRaceReaders(t *testing.T) {
	d, mnt := branchDirs(t, "rw", "ro1", "ro2")
	write(t, filepath.Join(d["ro1"], "etc/one"), "1")
	write(t, filepath.Join(d["ro2"], "etc/two"), "2")
	// Branched: statfs reads the top branch, not an upper.
	m := uniontest.MountAt(t, mnt, "br:"+d["ro1"]+"=ro:"+d["rw"]+"=rw")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				os.ReadDir(filepath.Join(mnt, "etc"))
				b, err := os.ReadFile(filepath.Join(mnt, "etc/one"))
				assert.NoError(t, err)
				assert.Equal(t, "1", string(b))
				var s unix.Statfs_t
				assert.NoError(t, unix.Statfs(mnt, &s))
			}
		}()
	}
	present, removed := false, 0
	for i := 0; i < 5; i++ {
		if !present {
			require.NoError(t, m.FS.AddBranch(unionfs.Branch{Path: d["ro2"], Mode: "ro"}, false))
			present = true
		}
		time.Sleep(5 * time.Millisecond)
		if err := m.FS.DelBranch(d["ro2"]); err != nil {
			require.ErrorIs(t, err, unix.EBUSY)
			continue
		}
		present = false
		removed++
	}
	t.Logf("%d removals of 5 got through the readers", removed)
	close(stop)
	wg.Wait()
}
