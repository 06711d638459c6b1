package unionfs_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

// listingBehaviours are checks of directory listings: merging, offsets,
// listings that change or are shared while read, removed open directories.
var listingBehaviours = []behaviour{
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
			a, first := openAndReadAFew(t, m+"/d")
			defer unix.Close(a)
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
		// The second reader reads to the end, which lets the union's
		// handle of the directory go: the first goes on from its offset
		// in a listing taken after the directory changed.
		name:  "a reader going on after names were added and removed lists each lasting name once",
		lower: manyFiles("d", 300),
		run: func(t *testing.T, m string) {
			a, first := openAndReadAFew(t, m+"/d")
			defer unix.Close(a)
			seenFirst := map[string]bool{}
			for _, name := range first {
				seenFirst[name] = true
			}
			b, err := unix.Open(m+"/d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			require.NoError(t, err)
			defer unix.Close(b)
			require.Len(t, readAllNames(t, b), 300)
			removed := map[string]bool{}
			for i := 0; i < 300; i += 7 {
				name := fmt.Sprintf("f%03d", i)
				require.NoError(t, os.Remove(m+"/d/"+name))
				removed[name] = true
			}
			for i := 0; i < 50; i++ {
				require.NoError(t, os.WriteFile(fmt.Sprintf("%s/d/new%02d", m, i), nil, 0o644))
			}
			seen := map[string]int{}
			for _, name := range append(first, readAllNames(t, a)...) {
				seen[name]++
			}
			for name, times := range seen {
				assert.Equal(t, 1, times, "times %s was listed", name)
			}
			for i := 0; i < 300; i++ {
				name := fmt.Sprintf("f%03d", i)
				if !removed[name] || seenFirst[name] {
					assert.Equal(t, 1, seen[name], "times %s was listed", name)
				}
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
}

// openAndReadAFew opens dir and reads its first few names, as one
// getdents call of a small buffer returns them.
func openAndReadAFew(t *testing.T, dir string) (int, []string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	buf := make([]byte, 512)
	n, err := unix.ReadDirent(fd, buf)
	if err != nil {
		unix.Close(fd)
		require.NoError(t, err)
	}
	_, _, first := unix.ParseDirent(buf[:n], -1, nil)
	require.NotEmpty(t, first)
	return fd, first
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
