package unionfs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// indexKernelOptions mount kernel overlay with its index, as unionmount's
// index=on writes it.
var indexKernelOptions = []string{"redirect_dir=on", "metacopy=off", "index=on"}

// mountIndexed mounts kernel overlay or unionmount with the index over l
// and returns its unmount.
func mountIndexed(t *testing.T, l *fstest.Layers, kernel bool) func() {
	t.Helper()
	if kernel {
		unmount, err := fstest.StartKernelOverlay(l, indexKernelOptions...)
		require.NoError(t, err, "kernel overlay with index=on over these layers")
		return func() { require.NoError(t, unmount()) }
	}
	m, err := uniontest.Start(l, "index=on")
	require.NoError(t, err, "unionmount with index=on over these layers")
	return func() { require.NoError(t, m.Unmount()) }
}

// linkView describes the non-directories under root: content, link count
// and, for names that share an inode, the number as "L" when it is lower
// (the lower file's number) and the group otherwise.
func linkView(t *testing.T, root string, lower uint64) string {
	t.Helper()
	var lines []string
	byIno := map[uint64][]string{}
	require.NoError(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		ino := "own"
		if st.Ino == lower {
			ino = "L"
		}
		dino := "d_ino=st_ino"
		if d := direntInos(t, filepath.Dir(p))[filepath.Base(p)]; d != st.Ino {
			dino = fmt.Sprintf("d_ino=%d st_ino=%d", d, st.Ino)
		}
		lines = append(lines, fmt.Sprintf("%s %q nlink=%d mode=%o ino=%s %s", rel, data, st.Nlink, st.Mode&0o7777, ino, dino))
		byIno[st.Ino] = append(byIno[st.Ino], rel)
		return nil
	}))
	for _, names := range byIno {
		if len(names) > 1 {
			sort.Strings(names)
			lines = append(lines, "one file: "+strings.Join(names, "="))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestIndexLayersAreReadByTheOther changes a lower hard link step by step,
// each step through kernel overlay or unionmount (both with index=on) in
// turn, and after each step remounts the same layers with the other: the
// other must show the same names, data, counts and numbers. Both ways are
// covered: unionmount reading what the kernel wrote, and the reverse. At
// the end, with every name gone, no index entry is left.
func TestIndexLayersAreReadByTheOther(t *testing.T) {
	fstest.RequireKernelOverlay(t)
	fstest.RequireFUSE(t)
	if fstest.InUserNamespace() {
		t.Skip("kernel overlay refuses index=on with userxattr, which a user namespace implies")
	}
	for _, firstKernel := range []bool{true, false} {
		first := map[bool]string{true: "kernel overlay", false: "unionmount"}[firstKernel]
		t.Run(first+" writes first", func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{
				"h1": "old\n", "h2": fstest.HardLink("h1"), "d/h3": fstest.HardLink("h1"),
				"g1": "g", "g2": fstest.HardLink("g1"), "plain": "p",
			})
			var lst unix.Stat_t
			require.NoError(t, unix.Lstat(filepath.Join(l.Lowers[0], "h1"), &lst))
			m := l.Mount
			steps := []struct {
				name string
				do   func() error
			}{
				{"write through h1", func() error {
					f, err := os.OpenFile(m+"/h1", os.O_WRONLY|os.O_APPEND, 0)
					if err != nil {
						return err
					}
					_, err = f.WriteString("changed\n")
					return errorsJoin(err, f.Close())
				}},
				{"link h1 to h1b", func() error { return os.Link(m+"/h1", m+"/h1b") }},
				{"unlink h2, never copied up", func() error { return os.Remove(m + "/h2") }},
				{"rename d/h3, never copied up", func() error { return os.Rename(m+"/d/h3", m+"/moved") }},
				{"unlink h1", func() error { return os.Remove(m + "/h1") }},
				{"chmod g1", func() error { return os.Chmod(m+"/g1", 0o600) }},
				{"write plain", func() error { return os.WriteFile(m+"/plain", []byte("q"), 0o644) }},
				{"unlink h1b", func() error { return os.Remove(m + "/h1b") }},
				{"unlink moved, the last name", func() error { return os.Remove(m + "/moved") }},
				{"unlink g2 and g1", func() error { return errorsJoin(os.Remove(m+"/g2"), os.Remove(m+"/g1")) }},
			}
			writerKernel := firstKernel
			for _, s := range steps {
				unmount := mountIndexed(t, l, writerKernel)
				require.NoError(t, s.do(), "%s through %s", s.name, map[bool]string{true: "kernel overlay", false: "unionmount"}[writerKernel])
				want := linkView(t, m, lst.Ino)
				unmount()
				unmount = mountIndexed(t, l, !writerKernel)
				got := linkView(t, m, lst.Ino)
				unmount()
				require.Equal(t, want, got, "after %s: the other's view of the layers", s.name)
				writerKernel = !writerKernel
			}
			ents, err := os.ReadDir(filepath.Join(l.Work, "index"))
			require.NoError(t, err)
			for _, e := range ents {
				assert.False(t, strings.HasPrefix(e.Name(), "00fb"), "index entry %s left after its names went", e.Name())
			}
		})
	}
}

func errorsJoin(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// TestIndexRacingCopyUpsThroughTwoNamesMakeOneEntry writes through two
// names of one lower hard link at once, many times over: one index entry,
// one file, every write seen through both names.
func TestIndexRacingCopyUpsThroughTwoNamesMakeOneEntry(t *testing.T) {
	fstest.RequireFUSE(t)
	if fstest.InUserNamespace() {
		t.Skip("index=on needs trusted xattrs, which a user namespace lacks")
	}
	const groups = 20
	l := fstest.NewLayers(t, 1)
	spec := fstest.Spec{}
	for i := range groups {
		spec[fmt.Sprintf("a%d", i)] = ""
		spec[fmt.Sprintf("d/b%d", i)] = fstest.HardLink(fmt.Sprintf("a%d", i))
	}
	fstest.WriteTree(t, l.Lowers[0], spec)
	uniontest.Mount(t, l, "index=on")
	m := l.Mount
	for i := range groups {
		names := []string{fmt.Sprintf("%s/a%d", m, i), fmt.Sprintf("%s/d/b%d", m, i)}
		done := make(chan error, 2)
		for j, p := range names {
			go func() {
				f, err := os.OpenFile(p, os.O_WRONLY, 0)
				if err == nil {
					_, err = f.WriteAt([]byte{byte('x' + j)}, int64(j))
					err = errorsJoin(err, f.Close())
				}
				done <- err
			}()
		}
		require.NoError(t, <-done)
		require.NoError(t, <-done)
		a, b := readFile(t, names[0]), readFile(t, names[1])
		assert.Equal(t, a, b, "group %d: one file", i)
		assert.Len(t, a, 2, "group %d: both writes landed in the one copy", i)
		assert.Equal(t, lstat(t, names[0]).Ino, lstat(t, names[1]).Ino)
	}
	ents, err := os.ReadDir(filepath.Join(l.Work, "index"))
	require.NoError(t, err)
	assert.Len(t, ents, groups, "one index entry per group")
}

// TestIndexOptionIsRefusedWhereTheKernelRefusesIt checks the bad
// combinations fail at mount with a message naming the problem.
func TestIndexOptionIsRefusedWhereTheKernelRefusesIt(t *testing.T) {
	fstest.RequireFUSE(t)
	for _, tc := range []struct {
		opts []string
		want string
	}{
		{[]string{"index=on", "userxattr"}, "userxattr"},
		{[]string{"index=on", "ro"}, "upper"},
	} {
		l := fstest.NewLayers(t, 1)
		m, err := uniontest.Start(l, tc.opts...)
		if err == nil {
			m.Unmount()
		}
		require.Error(t, err, "%v", tc.opts)
		assert.Contains(t, err.Error(), tc.want)
	}
	// An upper used with another lower is refused, as the kernel does.
	l := fstest.NewLayers(t, 1)
	mountIndexed(t, l, false)()
	other := fstest.NewLayers(t, 1)
	l.Lowers = other.Lowers
	m, err := uniontest.Start(l, "index=on")
	if err == nil {
		m.Unmount()
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "another lower")
}

// TestIndexNameChangesRaceWithWritesAndStatsOfOneGroup races writes,
// links and unlinks and stats on the names of one indexed lower hard
// link: every stat shows the lower's number and a count the group had at
// some moment, and at the end the count and the data are whole.
func TestIndexNameChangesRaceWithWritesAndStatsOfOneGroup(t *testing.T) {
	fstest.RequireFUSE(t)
	if fstest.InUserNamespace() {
		t.Skip("index=on needs trusted xattrs, which a user namespace lacks")
	}
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"h1": "", "h2": fstest.HardLink("h1"), "d/h3": fstest.HardLink("h1")})
	uniontest.Mount(t, l, "index=on")
	m := l.Mount
	ino := lstat(t, m+"/h2").Ino
	const rounds = 200
	errs := make(chan error, 3)
	go func() { // writer through h1
		for range rounds {
			f, err := os.OpenFile(m+"/h1", os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				errs <- err
				return
			}
			_, err = f.WriteString("x")
			f.Close()
			if err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	go func() { // links and unlinks through h2
		for range rounds {
			if err := os.Link(m+"/h2", m+"/extra"); err != nil {
				errs <- err
				return
			}
			if err := os.Remove(m + "/extra"); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	go func() { // stats of a name never written through
		for range rounds {
			var st unix.Stat_t
			if err := unix.Lstat(m+"/d/h3", &st); err != nil {
				errs <- err
				return
			}
			if st.Ino != ino || st.Nlink < 3 || st.Nlink > 4 {
				errs <- fmt.Errorf("d/h3: ino %d nlink %d, want ino %d nlink 3 or 4", st.Ino, st.Nlink, ino)
				return
			}
		}
		errs <- nil
	}()
	for range 3 {
		require.NoError(t, <-errs)
	}
	for _, n := range []string{"h1", "h2", "d/h3"} {
		st := lstat(t, m+"/"+n)
		assert.Equal(t, ino, st.Ino, n)
		assert.Equal(t, uint64(3), st.Nlink, n)
		assert.Equal(t, strings.Repeat("x", rounds), readFile(t, m+"/"+n), n)
	}
	ents, err := os.ReadDir(filepath.Join(l.Work, "index"))
	require.NoError(t, err)
	assert.Len(t, ents, 1, "one index entry")
}
