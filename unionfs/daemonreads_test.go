package unionfs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// readAtDirect reads size bytes at off with O_DIRECT, so that the kernel
// sends one READ of that size rather than its readahead's.
func readAtDirect(t *testing.T, path string, off int64, size int) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	raw := make([]byte, size+4096)
	skip := (4096 - int(uintptr(unsafe.Pointer(&raw[0])))%4096) % 4096
	buf := raw[skip : skip+size]
	n, err := f.ReadAt(buf, off)
	if n < size {
		require.ErrorContains(t, err, "EOF", "read of %d at %d", size, off)
	}
	return buf[:n]
}

// Reads the daemon serves (no passthrough) come from the layer file by
// splice when large, and by copy when small: both must give the file's
// bytes at every size, offset and file end, before and after a copy-up.
func TestDaemonServedReadsGiveTheFilesBytesAtEverySize(t *testing.T) {
	for _, transport := range []string{"dev-fuse", "auto"} {
		t.Run(transport, func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			size := 3<<20 + 123
			want := patterned(size, 7)
			require.NoError(t, os.WriteFile(filepath.Join(l.Lowers[0], "f"), want, 0o644))
			m := uniontest.Mount(t, l, "passthrough=off", "transport="+transport)
			path := filepath.Join(l.Mount, "f")
			check := func(stage string) {
				for _, c := range []struct{ off, size int }{
					{0, 4096}, {4096, 64<<10 - 4096}, {0, 64 << 10}, {8192, 128 << 10},
					{1 << 20, 1<<20 - 8192}, {size &^ 4095, 4096}, {size - 123 - 4096, 8192},
				} {
					got := readAtDirect(t, path, int64(c.off), c.size)
					end := min(c.off+c.size, size)
					assert.True(t, bytes.Equal(want[c.off:end], got), "%s: %d bytes at %d came back different (%d bytes)", stage, c.size, c.off, len(got))
				}
				got, err := os.ReadFile(path)
				require.NoError(t, err)
				assert.True(t, bytes.Equal(want, got), "%s: the whole file read back differently", stage)
			}
			check("lower")
			// A copy-up: the same reads now come from the upper file.
			want[size/2] ^= 0xff
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt(want[size/2:size/2+1], int64(size/2))
			require.NoError(t, err)
			require.NoError(t, f.Close())
			check("upper")
			assert.NotZero(t, m.FS.DaemonReads(), "no read reached the daemon")
		})
	}
}
