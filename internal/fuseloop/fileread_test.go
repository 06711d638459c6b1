package fuseloop

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// fileReadRoot serves one file, "data", whose reads are answered with
// FileRead over a descriptor of a real file, without cutting them at the
// end of the file: a read past it makes the splice come up short.
type fileReadRoot struct {
	fs.Inode
	path   string
	server atomic.Pointer[Server]
}

type fileReadNode struct {
	fs.Inode
	root *fileReadRoot
}

type fileReadHandle struct{ fd int }

func (r *fileReadRoot) OnAdd(ctx context.Context) {
	r.AddChild("data", r.NewPersistentInode(ctx, &fileReadNode{root: r}, fs.StableAttr{}), false)
}

func (n *fileReadNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Stat(n.root.path, &st); err != nil {
		return fs.ToErrno(err)
	}
	out.Mode = fuse.S_IFREG | 0o644
	out.Size = uint64(st.Size)
	return 0
}

func (n *fileReadNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fd, err := unix.Open(n.root.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	// Every read comes to the daemon: the file changes under the kernel.
	return &fileReadHandle{fd: fd}, fuse.FOPEN_DIRECT_IO, 0
}

func (n *fileReadNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return n.root.server.Load().FileRead(fh.(*fileReadHandle).fd, off, len(dest)), 0
}

func (n *fileReadNode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return fs.ToErrno(unix.Close(fh.(*fileReadHandle).fd))
}

// mountFileRead mounts a fileReadRoot over the file at path.
func mountFileRead(t *testing.T, path string) (mnt string, s *Server) {
	t.Helper()
	root := &fileReadRoot{path: path}
	mnt, s = mountRoot(t, root)
	root.server.Store(s)
	return mnt, s
}

func TestLargeReadsAreSplicedFromTheFileAndReadBackExactly(t *testing.T) {
	backing := filepath.Join(t.TempDir(), "backing")
	want := pattern(5, 3*testMaxWrite+4097)
	require.NoError(t, os.WriteFile(backing, want, 0o644))
	mnt, s := mountFileRead(t, backing)
	f, err := os.Open(filepath.Join(mnt, "data"))
	require.NoError(t, err)
	defer f.Close()

	for _, c := range []struct{ off, size int }{
		{0, 128 << 10}, {1, 128 << 10}, {4095, 64<<10 + 3}, {pageSize, testMaxWrite},
		{7, testMaxWrite}, {len(want) - 100, 100}, {len(want) - 5000, 5000},
	} {
		got := make([]byte, c.size)
		n, err := f.ReadAt(got, int64(c.off))
		if n == c.size {
			err = nil
		}
		require.NoError(t, err, "read of %d at %d", c.size, c.off)
		assert.True(t, bytes.Equal(want[c.off:c.off+c.size], got[:n]), "read of %d at %d came back different", c.size, c.off)
	}
	assert.NotZero(t, s.splicedReplies.Load(), "no reply was spliced")

	// Past the end: the kernel asks for more than there is, the splice
	// comes up short, and the reply is rebuilt with what there is.
	copied := s.repliesCopiedAfterSplice.Load()
	got := make([]byte, 64<<10)
	n, _ := f.ReadAt(got, int64(len(want)-1000))
	assert.Equal(t, 1000, n)
	assert.True(t, bytes.Equal(want[len(want)-1000:], got[:n]), "a read over the end came back different")
	assert.Greater(t, s.repliesCopiedAfterSplice.Load(), copied, "the short splice was not rebuilt by copy")

	// The pipe is clean for the next reply.
	got = make([]byte, 128<<10)
	_, err = f.ReadAt(got, 12345)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want[12345:12345+len(got)], got), "the read after a rebuilt reply came back different")
}

// Reads racing a writer that shrinks and regrows the file: every byte a
// read returns is the file's at that offset in one of its versions, and
// no reply is left half in a pipe for the next.
func TestSplicedReadsRacingATruncatingWriterReturnOnlyFileBytes(t *testing.T) {
	backing := filepath.Join(t.TempDir(), "backing")
	size := 2 * testMaxWrite
	want := pattern(9, size)
	require.NoError(t, os.WriteFile(backing, want, 0o644))
	mnt, s := mountFileRead(t, backing)

	stop := make(chan struct{})
	var writer sync.WaitGroup
	writer.Add(1)
	go func() {
		defer writer.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Shrink to a varying length, then put the content back.
			if err := os.Truncate(backing, int64((i*37%17)*pageSize+i%pageSize)); err != nil {
				t.Error(err)
				return
			}
			if err := os.WriteFile(backing, want, 0o644); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var readers sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 3; w++ {
		readers.Add(1)
		go func(w int) {
			defer readers.Done()
			f, err := os.Open(filepath.Join(mnt, "data"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			buf := make([]byte, 256<<10)
			for i := 0; i < 200; i++ {
				off := (i*7919 + w*104729) % (size - len(buf))
				n, _ := f.ReadAt(buf, int64(off))
				for j := 0; j < n; j++ {
					// A shrink leaves zeros where the file grows back
					// before its content is rewritten.
					if buf[j] != want[off+j] && buf[j] != 0 {
						errs <- fmt.Errorf("reader %d: byte %d of a read at %d is %#x, the file never held it", w, j, off, buf[j])
						return
					}
				}
			}
		}(w)
	}
	readers.Wait()
	close(stop)
	writer.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d replies spliced, %d rebuilt after a short splice", s.splicedReplies.Load(), s.repliesCopiedAfterSplice.Load())
	assert.NotZero(t, s.splicedReplies.Load(), "no reply was spliced")
}
