package unionfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// requirePassthrough skips the test unless the kernel agreed to FUSE
// passthrough on m.
func requirePassthrough(t *testing.T, m *uniontest.Mounted) {
	t.Helper()
	if !m.FS.Passthrough() {
		t.Skip("the kernel did not offer FUSE passthrough (needs root of the initial user namespace and Linux 6.9+)")
	}
}

// cachedPages is how many pages of the file open as fd the page cache
// holds for that file itself (cachestat(2), Linux 6.5+): for a file of a
// FUSE mount, the pages of the union's inode, not of its layer file.
func cachedPages(t *testing.T, fd int) uint64 {
	t.Helper()
	var cs unix.Cachestat_t
	err := unix.Cachestat(uint(fd), &unix.CachestatRange{}, &cs, 0)
	if errors.Is(err, unix.ENOSYS) {
		t.Skip("no cachestat(2) (Linux 6.5+) to count cached pages")
	}
	require.NoError(t, err)
	return cs.Cache
}

// patterned returns n bytes that differ at every offset from those of
// another seed, so a read from the wrong place or file shows.
func patterned(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i%251) ^ seed
	}
	return b
}

// dropFromCache writes out and drops the file's pages from the page
// cache, so that what a test reads afterwards brings them back in.
func dropFromCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Sync())
	require.NoError(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
}

func TestLowerFilesAreReadThroughPassthrough(t *testing.T) {
	l := fstest.NewLayers(t, 1)
	content := patterned(1<<20+123, 0)
	require.NoError(t, os.WriteFile(filepath.Join(l.Lowers[0], "f"), content, 0o644))

	t.Run("on: the kernel reads the lower file", func(t *testing.T) {
		m := uniontest.Mount(t, l)
		requirePassthrough(t, m)
		before := m.FS.DaemonReads()
		got, err := os.ReadFile(l.Mount + "/f")
		require.NoError(t, err)
		assert.True(t, bytes.Equal(content, got), "the lower file's content")
		assert.Equal(t, before, m.FS.DaemonReads(), "no read reached the daemon")
		assert.True(t, m.FS.Mode().LowerPassthrough)
	})
	t.Run("upper: the daemon serves lower files", func(t *testing.T) {
		m := uniontest.Mount(t, l, "passthrough=upper")
		requirePassthrough(t, m)
		before := m.FS.DaemonReads()
		got, err := os.ReadFile(l.Mount + "/f")
		require.NoError(t, err)
		assert.True(t, bytes.Equal(content, got), "the lower file's content")
		assert.Greater(t, m.FS.DaemonReads(), before)
		assert.False(t, m.FS.Mode().LowerPassthrough)
	})
}

// Two unions over one lower (two containers of one image) read one file.
// With lower files through passthrough neither union's inode keeps pages
// of its own: the host keeps one copy, the lower file's, as with kernel
// overlay. Served by the daemon (passthrough=upper), each union keeps a
// copy besides: that case proves the count sees copies where they are.
func TestUnionsOverOneLowerShareItsPageCache(t *testing.T) {
	for _, c := range []struct {
		option      string
		sharesLower bool
	}{{"passthrough=on", true}, {"passthrough=upper", false}} {
		t.Run(c.option, func(t *testing.T) {
			a := fstest.NewLayers(t, 1)
			b := fstest.NewLayers(t, 0)
			const size = 8 << 20
			const pages = size / 4096
			lower := filepath.Join(a.Lowers[0], "lib.so")
			require.NoError(t, os.WriteFile(lower, patterned(size, 1), 0o644))
			ma := uniontest.Mount(t, a, c.option)
			requirePassthrough(t, ma)
			uniontest.MountAt(t, b.Mount, "lowerdir="+a.Lowers[0]+",upperdir="+b.Upper+",workdir="+b.Work, c.option)
			dropFromCache(t, lower)

			var unionPages uint64
			for _, mount := range []string{a.Mount, b.Mount} {
				f, err := os.Open(mount + "/lib.so")
				require.NoError(t, err)
				got, err := io.ReadAll(f)
				require.NoError(t, err)
				require.True(t, bytes.Equal(patterned(size, 1), got), "%s: the lower file's content", mount)
				unionPages += cachedPages(t, int(f.Fd()))
				require.NoError(t, f.Close())
			}
			lf, err := os.Open(lower)
			require.NoError(t, err)
			defer lf.Close()
			lowerPages := cachedPages(t, int(lf.Fd()))
			t.Logf("pages cached: %d of the lower file, %d of the two unions' inodes (the file has %d)", lowerPages, unionPages, pages)
			if c.sharesLower {
				assert.Less(t, unionPages, uint64(pages/8), "the unions keep no copies of their own")
				assert.Greater(t, lowerPages, uint64(pages*7/8), "the reads went through the lower file's page cache")
			} else {
				assert.Greater(t, unionPages, uint64(pages), "each union keeps a copy")
			}
		})
	}
}

// A reader of a lower file through passthrough reads the lower file
// itself, and the kernel cannot move it to an upper copy as kernel
// overlay does: while it is open, the file's data must not change. An
// open for writing and a truncation fail with ETXTBSY (after a short
// wait for the reader to close); a change of metadata copies up as
// ever. Once the readers are gone, the write goes through.
func TestWritingALowerFileWhileItIsReadThroughPassthrough(t *testing.T) {
	for _, opts := range [][]string{{}, {"metacopy=on"}} {
		t.Run(fmt.Sprint(opts), func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			old := patterned(100_000, 2)
			require.NoError(t, os.WriteFile(filepath.Join(l.Lowers[0], "f"), old, 0o644))
			m := uniontest.Mount(t, l, opts...)
			requirePassthrough(t, m)
			f := l.Mount + "/f"

			reader, err := os.Open(f)
			require.NoError(t, err)
			defer reader.Close()
			readsBefore := m.FS.DaemonReads()
			assertReads := func(r *os.File, want []byte, what string) {
				t.Helper()
				got := make([]byte, len(want)+1)
				n, err := r.ReadAt(got, 0)
				require.ErrorIs(t, err, io.EOF, what)
				assert.True(t, bytes.Equal(want, got[:n]), "%s: read %d bytes, not the expected content", what, n)
			}
			assertReads(reader, old, "the reader")
			require.Equal(t, readsBefore, m.FS.DaemonReads(), "the reader reads through passthrough")

			_, err = os.OpenFile(f, os.O_WRONLY, 0)
			assert.ErrorIs(t, err, syscall.ETXTBSY, "open for writing")
			_, err = os.OpenFile(f, os.O_RDONLY|os.O_TRUNC, 0)
			assert.ErrorIs(t, err, syscall.ETXTBSY, "open with O_TRUNC")
			assert.ErrorIs(t, os.Truncate(f, 10), syscall.ETXTBSY, "truncate")
			assert.ErrorIs(t, os.Truncate(f, 0), syscall.ETXTBSY, "truncate to 0")

			// Metadata changes copy up (all of it, or metadata only).
			require.NoError(t, os.Chmod(f, 0o600))
			assert.FileExists(t, filepath.Join(l.Upper, "f"))
			second, err := os.Open(f)
			require.NoError(t, err, "a second reader after the copy-up")
			defer second.Close()
			assertReads(second, old, "the second reader")
			assertReads(reader, old, "the first reader")
			_, err = os.OpenFile(f, os.O_RDWR, 0)
			assert.ErrorIs(t, err, syscall.ETXTBSY, "open for writing with two readers")
			assert.Equal(t, uint32(0o600), lstat(t, f).Mode&0o7777)

			require.NoError(t, reader.Close())
			_, err = os.OpenFile(f, os.O_WRONLY, 0)
			assert.ErrorIs(t, err, syscall.ETXTBSY, "open for writing while one reader is left")
			require.NoError(t, second.Close())

			w, err := os.OpenFile(f, os.O_WRONLY, 0)
			require.NoError(t, err, "open for writing once the readers are gone")
			_, err = w.WriteAt([]byte("NEW"), 0)
			require.NoError(t, err)
			require.NoError(t, w.Close())
			want := append([]byte("NEW"), old[3:]...)
			third, err := os.Open(f)
			require.NoError(t, err)
			defer third.Close()
			assertReads(third, want, "a reader after the write")
			require.NoError(t, os.Truncate(f, 10))
			assert.Equal(t, want[:10], []byte(readFile(t, f)))
			lowerData, err := os.ReadFile(filepath.Join(l.Lowers[0], "f"))
			require.NoError(t, err)
			assert.True(t, bytes.Equal(old, lowerData), "the lower file is untouched")
		})
	}
}

// Readers open, read and close lower files through passthrough while
// writers copy the same files up by opening them for writing and by
// truncating them (to their size, keeping it). Every read returns whole
// data, each byte the old lower one or the writers' new one; a writer
// sees success or ETXTBSY, never EIO; and once the readers are gone every
// file takes its new content.
func TestReadersOfLowerFilesRaceCopyUps(t *testing.T) {
	for _, opts := range [][]string{{}, {"metacopy=on"}} {
		t.Run(fmt.Sprint(opts), func(t *testing.T) {
			const files, size, passes = 32, 20_000, 4
			l := fstest.NewLayers(t, 1)
			old, fresh := patterned(size, 3), patterned(size, 0xa5)
			for i := 0; i < files; i++ {
				require.NoError(t, os.WriteFile(filepath.Join(l.Lowers[0], fmt.Sprint("f", i)), old, 0o644))
			}
			m := uniontest.Mount(t, l, opts...)
			requirePassthrough(t, m)
			name := func(i int) string { return filepath.Join(l.Mount, fmt.Sprint("f", i%files)) }

			var wg sync.WaitGroup
			errs := make(chan error, 64)
			fail := func(err error) {
				select {
				case errs <- err:
				default:
				}
			}
			var mu sync.Mutex
			var written, refused int
			// The writers start once every reader has a file open, so
			// copy-ups meet readers of the lower files.
			var readersIn sync.WaitGroup
			const readers = 3
			readersIn.Add(readers)
			for r := 0; r < readers; r++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, size+1)
					for i := 0; i < passes*files; i++ {
						p := name(i + r*files/readers)
						h, err := os.Open(p)
						if i == 0 {
							readersIn.Done()
						}
						if err != nil {
							fail(fmt.Errorf("open %s: %w", p, err))
							continue
						}
						n, err := h.ReadAt(buf, 0)
						h.Close()
						if !errors.Is(err, io.EOF) || n != size {
							fail(fmt.Errorf("read %s: %d bytes, %v", p, n, err))
							continue
						}
						for j := 0; j < n; j++ {
							if buf[j] != old[j] && buf[j] != fresh[j] {
								fail(fmt.Errorf("read %s: byte %d is %#x, neither old %#x nor new %#x", p, j, buf[j], old[j], fresh[j]))
								break
							}
						}
					}
				}()
			}
			readersIn.Wait()
			for w := 0; w < 2; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < files; i++ {
						p := name(i*(1+2*w) + w) // the writers go round in different orders
						var err error
						if i%4 == 3 {
							err = os.Truncate(p, size)
						} else {
							var h *os.File
							if h, err = os.OpenFile(p, os.O_WRONLY, 0); err == nil {
								_, err = h.WriteAt(fresh, 0)
								if cerr := h.Close(); err == nil {
									err = cerr
								}
							}
						}
						mu.Lock()
						switch {
						case err == nil:
							written++
						case errors.Is(err, syscall.ETXTBSY):
							refused++
						default:
							fail(fmt.Errorf("write %s: %w", p, err))
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Logf("changes made %d, refused while read %d", written, refused)

			for i := 0; i < files; i++ {
				require.NoError(t, os.WriteFile(name(i), fresh, 0o644), "no readers left")
				assert.True(t, bytes.Equal(fresh, []byte(readFile(t, name(i)))), "f%d has the new content", i)
				lowerData, err := os.ReadFile(filepath.Join(l.Lowers[0], fmt.Sprint("f", i)))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(old, lowerData), "lower f%d is untouched", i)
			}
		})
	}
}
