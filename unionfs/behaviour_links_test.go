package unionfs_test

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

// copyUpKinds are the ways a change copies a lower file up, each applied
// to the file at p.
var copyUpKinds = []struct {
	name string
	do   func(t *testing.T, p string)
}{
	{"opening it for writing", func(t *testing.T, p string) {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}},
	{"writing", func(t *testing.T, p string) {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		require.NoError(t, err)
		_, err = f.WriteString("more")
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}},
	{"truncating it", func(t *testing.T, p string) { require.NoError(t, os.Truncate(p, 1)) }},
	{"chmod", func(t *testing.T, p string) { require.NoError(t, os.Chmod(p, 0o600)) }},
	{"setxattr", func(t *testing.T, p string) { require.NoError(t, unix.Setxattr(p, "user.k", []byte("v"), 0)) }},
	{"a writable mmap", func(t *testing.T, p string) {
		// In a process of its own: the union is served by this one, and
		// a page fault of a Go thread waiting on it cannot be stopped
		// for a garbage collection, which then stops the server too.
		script := `import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 3)
m[0:1] = b"O"
m.flush()
m.close()
os.close(fd)`
		out, err := exec.Command("python3", "-c", script, p).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}},
}

// linkSpec is a lower layer holding one two-name hard link per kind of
// copy-up: NAME1 and NAME2.
func linkSpec() fstest.Spec {
	spec := fstest.Spec{}
	for i := range copyUpKinds {
		n := string(rune('a' + i))
		spec[n+"1"] = "old"
		spec[n+"2"] = fstest.HardLink(n + "1")
	}
	return spec
}

// linkBehaviours are checks of hard links in a lower layer. Without
// kernel overlay's index feature copy-up breaks them apart: each name that
// is copied up becomes a file of its own. With it (indexTargets) the link
// group stays one file.
var linkBehaviours = []behaviour{
	{
		name:  "the names of a lower hard link share an inode in stat and in readdir",
		lower: fstest.Spec{"d/h1": "old", "d/h2": fstest.HardLink("d/h1")},
		run: func(t *testing.T, m string) {
			a, b := lstat(t, m+"/d/h1"), lstat(t, m+"/d/h2")
			assert.Equal(t, a.Ino, b.Ino)
			assert.Equal(t, uint64(2), a.Nlink)
			ents := direntInos(t, m+"/d")
			assert.Equal(t, a.Ino, ents["h1"], "d_ino is st_ino")
			assert.Equal(t, a.Ino, ents["h2"], "d_ino is st_ino")
		},
	},
	{
		name:      "a copy-up of one name of a lower hard link shows one link at once whatever copies it up",
		index:     indexOff,
		lower:     linkSpec(),
		unionOnly: true,
		run: func(t *testing.T, m string) {
			for i, k := range copyUpKinds {
				n := m + "/" + string(rune('a'+i))
				lstat(t, n+"1") // the kernel caches the lower's attributes
				k.do(t, n+"1")
				assert.Equal(t, uint64(1), lstat(t, n+"1").Nlink, "copied up by %s", k.name)
				assert.Equal(t, uint64(2), lstat(t, n+"2").Nlink, "the other name, after %s", k.name)
				assert.Equal(t, "old", readFile(t, n+"2"), "the other name, after %s", k.name)
			}
		},
	},
	{
		name:                   "a copy-up of one name of a lower hard link gives it an inode number of its own in stat and fstat and readdir",
		readsLowerWhileWritten: true,
		index:                  indexOff,
		lower:                  linkSpec(),
		unionOnly:              true,
		run: func(t *testing.T, m string) {
			for i, k := range copyUpKinds {
				n := m + "/" + string(rune('a'+i))
				before := lstat(t, n+"1").Ino
				f, err := os.Open(n + "1") // a reader from before the copy-up
				require.NoError(t, err)
				k.do(t, n+"1")
				one, two := lstat(t, n+"1").Ino, lstat(t, n+"2").Ino
				assert.NotEqual(t, one, two, "two files, after %s", k.name)
				assert.Equal(t, before, two, "the other name keeps the number, after %s", k.name)
				var st unix.Stat_t
				require.NoError(t, unix.Fstat(int(f.Fd()), &st))
				assert.Equal(t, one, st.Ino, "fstat of a descriptor opened before %s", k.name)
				require.NoError(t, f.Close())
				ents := direntInos(t, m)
				assert.Equal(t, one, ents[filepath.Base(n)+"1"], "d_ino after %s", k.name)
				assert.Equal(t, two, ents[filepath.Base(n)+"2"], "d_ino after %s", k.name)
			}
		},
	},
	{
		name:      "a lower hard link written through one name and linked again shares the copy's number while the old name keeps its own and its data",
		index:     indexOff,
		lower:     fstest.Spec{"h1": "old\n", "h2": fstest.HardLink("h1")},
		unionOnly: true,
		run: func(t *testing.T, m string) {
			f, err := os.OpenFile(m+"/h1", os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString("changed\n")
			require.NoError(t, err)
			require.NoError(t, f.Close())
			require.NoError(t, os.Link(m+"/h1", m+"/h1b"))
			h1, h1b, h2 := lstat(t, m+"/h1"), lstat(t, m+"/h1b"), lstat(t, m+"/h2")
			assert.Equal(t, h1.Ino, h1b.Ino)
			assert.Equal(t, uint64(2), h1.Nlink)
			assert.NotEqual(t, h1.Ino, h2.Ino, "h2 holds other data")
			assert.Equal(t, uint64(2), h2.Nlink, "the lower file still has two names")
			assert.Equal(t, "old\nchanged\n", readFile(t, m+"/h1b"))
			assert.Equal(t, "old\n", readFile(t, m+"/h2"))
			// tar stores a second name with the same number as a link
			// to the first: h2 must be stored whole.
			out, err := exec.Command("sh", "-c", "tar -C "+m+" -cf - h1 h1b h2 | tar -tvf -").CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "h1b link to h1")
			assert.NotContains(t, string(out), "h2 link to")
		},
	},
	{
		name:      "renames and unlinks after a copy-up that broke a lower hard link act on one name",
		index:     indexOff,
		lower:     fstest.Spec{"h1": "old", "h2": fstest.HardLink("h1"), "h3": fstest.HardLink("h1")},
		unionOnly: true,
		run: func(t *testing.T, m string) {
			require.NoError(t, os.WriteFile(m+"/h1", []byte("new"), 0o644))
			copied := lstat(t, m+"/h1").Ino
			require.NoError(t, os.Rename(m+"/h1", m+"/moved"))
			assert.Equal(t, copied, lstat(t, m+"/moved").Ino, "a rename keeps the number")
			require.NoError(t, os.Remove(m+"/h2"))
			assert.Equal(t, "new", readFile(t, m+"/moved"))
			assert.Equal(t, "old", readFile(t, m+"/h3"))
			assert.Equal(t, uint64(1), lstat(t, m+"/moved").Nlink)
			assert.Equal(t, uint64(3), lstat(t, m+"/h3").Nlink, "the lower file's count, as the kernel shows it")
			assert.NotEqual(t, copied, lstat(t, m+"/h3").Ino)
			require.NoError(t, os.Link(m+"/h3", m+"/h4"))
			h3, h4 := lstat(t, m+"/h3"), lstat(t, m+"/h4")
			assert.Equal(t, h3.Ino, h4.Ino)
			assert.NotEqual(t, copied, h3.Ino)
			assert.Equal(t, "old", readFile(t, m+"/h4"))
		},
	},
}

// indexBehaviours are the lower hard link checks with the index on.
var indexBehaviours = []behaviour{
	{
		name:                   "with the index a copy-up of one name of a lower hard link is seen through the other name whatever copies it up",
		readsLowerWhileWritten: true,
		lower:                  linkSpec(),
		unionOnly:              true,
		index:                  indexOn,
		run: func(t *testing.T, m string) {
			for i, k := range copyUpKinds {
				n := m + "/" + string(rune('a'+i))
				before := lstat(t, n+"2")  // the kernel caches the lower's attributes
				f, err := os.Open(n + "2") // a reader from before the copy-up
				require.NoError(t, err)
				k.do(t, n+"1")
				one, two := lstat(t, n+"1"), lstat(t, n+"2")
				assert.Equal(t, before.Ino, one.Ino, "the lower's number, after %s", k.name)
				assert.Equal(t, before.Ino, two.Ino, "the lower's number, after %s", k.name)
				assert.Equal(t, uint64(2), one.Nlink, "after %s", k.name)
				assert.Equal(t, uint64(2), two.Nlink, "after %s", k.name)
				assert.Equal(t, one.Mode, two.Mode, "after %s", k.name)
				assert.Equal(t, one.Size, two.Size, "after %s", k.name)
				assert.Equal(t, readFile(t, n+"1"), readFile(t, n+"2"), "after %s", k.name)
				var st unix.Stat_t
				require.NoError(t, unix.Fstat(int(f.Fd()), &st))
				assert.Equal(t, before.Ino, st.Ino, "fstat of a descriptor opened before %s", k.name)
				require.NoError(t, f.Close())
				ents := direntInos(t, m)
				assert.Equal(t, before.Ino, ents[filepath.Base(n)+"1"], "d_ino after %s", k.name)
				assert.Equal(t, before.Ino, ents[filepath.Base(n)+"2"], "d_ino after %s", k.name)
			}
			v := make([]byte, 8)
			sz, err := unix.Getxattr(m+"/e2", "user.k", v)
			require.NoError(t, err, "an xattr set through e1 is on e2")
			assert.Equal(t, "v", string(v[:sz]))
		},
	},
	{
		name: "with the index link and unlink and rename of the names of a lower hard link keep one file and one count as the kernel does",
		lower: fstest.Spec{"h1": "old\n", "h2": fstest.HardLink("h1"), "d/h3": fstest.HardLink("h1"), "g1": "g", "g2": fstest.HardLink("g1"),
			"k1": "k", "d/k2": fstest.HardLink("k1"),
			"p1": "p", "p2": fstest.HardLink("p1"), "d/p3": fstest.HardLink("p1")},
		unionOnly: true,
		index:     indexOn,
		run: func(t *testing.T, m string) {
			ino := lstat(t, m+"/h1").Ino
			group := func(want uint64, names ...string) {
				t.Helper()
				for _, nm := range names {
					st := lstat(t, m+"/"+nm)
					assert.Equal(t, ino, st.Ino, nm)
					assert.Equal(t, want, st.Nlink, nm)
					assert.Equal(t, "old\nchanged\n", readFile(t, m+"/"+nm), nm)
				}
			}
			f, err := os.OpenFile(m+"/h1", os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString("changed\n")
			require.NoError(t, err)
			require.NoError(t, f.Close())
			group(3, "h1", "h2", "d/h3")
			require.NoError(t, os.Link(m+"/h1", m+"/h1b"))
			group(4, "h1", "h1b", "h2", "d/h3")
			require.NoError(t, os.Remove(m+"/h2"))
			group(3, "h1", "h1b", "d/h3")
			require.NoError(t, os.Rename(m+"/d/h3", m+"/moved"))
			group(3, "h1", "h1b", "moved")
			require.NoError(t, os.Rename(m+"/h1b", m+"/h1"), "two names of one file: nothing happens")
			group(3, "h1", "h1b", "moved")
			require.NoError(t, os.WriteFile(m+"/other", []byte("x"), 0o644))
			require.NoError(t, os.Rename(m+"/other", m+"/h1"), "a rename over a name of the group")
			group(2, "h1b", "moved")
			require.NoError(t, os.Remove(m+"/h1b"))
			group(1, "moved")
			// The upper names go; a name only below is left: the
			// entry alone holds the data.
			require.NoError(t, os.Link(m+"/moved", m+"/d/h4"))
			group(2, "moved", "d/h4")
			require.NoError(t, os.Remove(m+"/moved"))
			group(1, "d/h4")
			require.NoError(t, os.Rename(m+"/d/h4", m+"/moved"))
			// tar stores the names of one file as links to the first.
			require.NoError(t, os.Link(m+"/moved", m+"/again"))
			out, err := exec.Command("sh", "-c", "tar -C "+m+" -cf - again moved | tar -tvf -").CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "moved link to again")
			// A name never copied up exchanged with a new file.
			lstat(t, m+"/k1")
			k := lstat(t, m+"/d/k2").Ino // the name the union looked up last
			require.NoError(t, os.WriteFile(m+"/new", []byte("n"), 0o644))
			require.NoError(t, unix.Renameat2(unix.AT_FDCWD, m+"/k1", unix.AT_FDCWD, m+"/new", unix.RENAME_EXCHANGE))
			assert.Equal(t, "n", readFile(t, m+"/k1"))
			assert.Equal(t, "k", readFile(t, m+"/new"))
			assert.Equal(t, k, lstat(t, m+"/new").Ino)
			assert.Equal(t, uint64(2), lstat(t, m+"/new").Nlink)
			require.NoError(t, os.WriteFile(m+"/d/k2", []byte("K"), 0o644))
			assert.Equal(t, "K", readFile(t, m+"/new"), "one file after the exchange")
			// The only upper name goes: the names left below read the
			// entry, with their count.
			require.NoError(t, os.WriteFile(m+"/p1", []byte("P"), 0o644))
			require.NoError(t, os.Remove(m+"/p1"))
			for _, n := range []string{"p2", "d/p3"} {
				assert.Equal(t, uint64(2), lstat(t, m+"/"+n).Nlink, n)
				assert.Equal(t, "P", readFile(t, m+"/"+n), n)
			}
			require.NoError(t, os.Remove(m+"/p2"))
			assert.Equal(t, uint64(1), lstat(t, m+"/d/p3").Nlink)
			assert.Equal(t, "P", readFile(t, m+"/d/p3"))
			// A group never copied up loses a name: the rest shows it.
			require.NoError(t, os.Remove(m+"/g1"))
			g2 := lstat(t, m+"/g2")
			assert.Equal(t, uint64(1), g2.Nlink)
			assert.Equal(t, "g", readFile(t, m+"/g2"))
		},
	},
}

func init() { linkBehaviours = append(linkBehaviours, indexBehaviours...) }

// direntInos lists dir with getdents and returns each name's d_ino.
func direntInos(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	out := map[string]uint64{}
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		require.NoError(t, err)
		if n == 0 {
			return out
		}
		for off := 0; off < n; {
			ino := binary.NativeEndian.Uint64(buf[off:])
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			name := buf[off+19 : off+reclen]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			out[string(name)] = ino
			off += reclen
		}
	}
}
