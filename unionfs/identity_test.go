package unionfs_test

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// TestBrokenHardLinksKeepTheirNumbersAfterRemount breaks a lower hard
// link apart on one mount (kernel overlay or unionmount), then mounts the
// layers again (with either): the copied-up name and its new link share
// one number, the name left below keeps another, and tar stores the two
// files whole.
func TestBrokenHardLinksKeepTheirNumbersAfterRemount(t *testing.T) {
	fstest.RequireKernelOverlay(t)
	fstest.RequireFUSE(t)
	type mounter func(l *fstest.Layers) (func() error, error)
	kernel := func(l *fstest.Layers) (func() error, error) {
		return fstest.StartKernelOverlay(l, kernelOverlayOptions()...)
	}
	union := func(l *fstest.Layers) (func() error, error) {
		m, err := uniontest.Start(l)
		if err != nil {
			return nil, err
		}
		return m.Unmount, nil
	}
	for _, c := range []struct {
		name           string
		writer, reader mounter
	}{
		{"kernel overlay then kernel overlay", kernel, kernel},
		{"unionmount then unionmount", union, union},
		{"kernel overlay then unionmount", kernel, union},
		{"unionmount then kernel overlay", union, kernel},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"h1": "old\n", "h2": fstest.HardLink("h1")})
			unmount, err := c.writer(l)
			require.NoError(t, err)
			f, err := os.OpenFile(l.Mount+"/h1", os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				_, err = f.WriteString("changed\n")
				f.Close()
			}
			if err == nil {
				err = os.Link(l.Mount+"/h1", l.Mount+"/h1b")
			}
			require.NoError(t, unmount())
			require.NoError(t, err)

			unmount, err = c.reader(l)
			require.NoError(t, err)
			defer func() { require.NoError(t, unmount()) }()
			h1, h1b, h2 := lstat(t, l.Mount+"/h1"), lstat(t, l.Mount+"/h1b"), lstat(t, l.Mount+"/h2")
			assert.Equal(t, h1.Ino, h1b.Ino)
			assert.Equal(t, uint64(2), h1.Nlink)
			assert.NotEqual(t, h1.Ino, h2.Ino)
			assert.Equal(t, "old\n", readFile(t, l.Mount+"/h2"))
			assert.Equal(t, "old\nchanged\n", readFile(t, l.Mount+"/h1b"))
			out, err := exec.Command("sh", "-c", "tar -C "+l.Mount+" -cf - h1 h1b h2 | tar -tvf -").CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.NotContains(t, string(out), "h2 link to")
		})
	}
}

// TestRacingCopyUpsOfAHardLinkName copies one name of a lower hard link up
// from several writers at once while others stat and list both names:
// one copy, every write in it, and once it is made the name's number
// stays the copy's.
func TestRacingCopyUpsOfAHardLinkName(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/h1": "", "d/h2": fstest.HardLink("d/h1")})
	uniontest.Mount(t, l)
	lower := lstat(t, l.Mount+"/d/h2").Ino
	const workers = 8
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 2*workers)
	for i := 0; i < workers; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			f, err := os.OpenFile(l.Mount+"/d/h1", os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				_, err = f.WriteString("x")
				f.Close()
			}
			errs <- err
		}()
		go func() {
			defer wg.Done()
			<-start
			var err error
			for j := 0; j < 20 && err == nil; j++ {
				var st unix.Stat_t
				if err = unix.Lstat(l.Mount+"/d/h1", &st); err == nil {
					err = unix.Lstat(l.Mount+"/d/h2", &st)
				}
				if err == nil {
					_, err = os.ReadDir(l.Mount + "/d")
				}
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, strings.Repeat("x", workers), readFile(t, l.Mount+"/d/h1"))
	copied := lstat(t, l.Mount+"/d/h1").Ino
	assert.NotEqual(t, lower, copied)
	assert.Equal(t, lower, lstat(t, l.Mount+"/d/h2").Ino)
	ents := direntInos(t, l.Mount+"/d")
	assert.Equal(t, copied, ents["h1"])
	assert.Equal(t, lower, ents["h2"])
}

// TestBrokenHardLinkWithMetacopyShowsOneNumber copies one name of a lower
// hard link up metadata only, then its data: the number it shows after
// the data copy is the one a remount shows.
func TestBrokenHardLinkWithMetacopyShowsOneNumber(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"h1": "old\n", "h2": fstest.HardLink("h1")})
	m, err := uniontest.Start(l, "metacopy=on")
	require.NoError(t, err)
	lower := lstat(t, l.Mount+"/h2").Ino
	require.NoError(t, os.Chmod(l.Mount+"/h1", 0o600))
	f, err := os.OpenFile(l.Mount+"/h1", os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString("more\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	before := lstat(t, l.Mount+"/h1").Ino
	assert.NotEqual(t, lower, before)
	require.NoError(t, m.Unmount())
	uniontest.Mount(t, l, "metacopy=on")
	assert.Equal(t, before, lstat(t, l.Mount+"/h1").Ino)
	assert.Equal(t, lower, lstat(t, l.Mount+"/h2").Ino)
	assert.Equal(t, "old\n", readFile(t, l.Mount+"/h2"))
}
