package unionfs_test

import (
	"encoding/binary"
	"os"
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
		fd, err := unix.Open(p, unix.O_RDWR, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		mem, err := unix.Mmap(fd, 0, 3, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		require.NoError(t, err)
		mem[0] = 'O'
		require.NoError(t, unix.Msync(mem, unix.MS_SYNC))
		require.NoError(t, unix.Munmap(mem))
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

// linkBehaviours are checks of hard links in a lower layer, which copy-up
// breaks apart (kernel overlay without its index feature): each name that
// is copied up becomes a file of its own.
var linkBehaviours = []behaviour{
	{
		name:  "the names of a lower hard link share an inode, in stat and in readdir",
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
		name:      "a copy-up of one name of a lower hard link shows one link at once, whatever copies it up",
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
}

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
