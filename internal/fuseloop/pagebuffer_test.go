package fuseloop

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/unionmount/unionmount/internal/fstest"
	"golang.org/x/sys/unix"
)

func TestPageBufferStartsAPageAtTheOffsetAskedFor(t *testing.T) {
	for _, offset := range []int{0, 1, 40, 80, pageSize - 1, pageSize, pageSize + 16} {
		b := newPageBuffer(3*pageSize+5, offset)
		require.NotNil(t, b.mapping, "mapping failed")
		assert.Len(t, b.data, 3*pageSize+5)
		addr := uintptr(unsafe.Pointer(&b.data[0])) + uintptr(offset)
		assert.Zero(t, addr%pageSize, "offset %d: byte %d is not on a page boundary", offset, offset)
		// Every byte is writable, through the last one.
		for i := range b.data {
			b.data[i] = byte(i)
		}
		b.release()
		assert.Zero(t, residentPages(t, b), "offset %d: pages resident after release", offset)
		assert.Equal(t, byte(0), b.data[len(b.data)-1], "a released buffer reads as zeros")
		b.free()
		assert.Nil(t, b.data)
	}
}

// residentPages counts the pages of b's mapping in memory.
func residentPages(t *testing.T, b pageBuffer) int {
	t.Helper()
	vec := make([]byte, (len(b.mapping)+pageSize-1)/pageSize)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b.mapping[0])), uintptr(len(b.mapping)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// readersResident sums the resident pages of the reply buffers of the
// loop's readers, live and kept for spares, and counts the latter.
func readersResident(t *testing.T, l *devLoop) (replyPages, idle int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for r := range l.live {
		replyPages += residentPages(t, r.outBuf)
	}
	for _, r := range l.idle {
		replyPages += residentPages(t, r.outBuf)
	}
	return replyPages, len(l.idle)
}

// waitNoReaderBusy waits until every reader is done with its request.
func waitNoReaderBusy(t *testing.T, l *devLoop) {
	t.Helper()
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for r := range l.live {
			if r.busy {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond, "a reader stayed busy")
}

// readDirect reads a whole file through the mount with O_DIRECT, so that
// the kernel asks for it in READs as large as the mount allows.
func readDirect(t *testing.T, path string, size int) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	raw := make([]byte, size+pageSize)
	skip := (pageSize - int(uintptr(unsafe.Pointer(&raw[0])))%pageSize) % pageSize
	buf := raw[skip : skip+size]
	n, err := f.ReadAt(buf, 0)
	if n == size {
		err = nil
	}
	require.NoError(t, err)
	return buf
}

// memRoot is a directory of files served from memory: unlike the
// loopback, whose reads the kernel passes through to the backing file,
// every read and write goes through the loop's buffers.
type memRoot struct {
	fs.Inode
	files map[string][]byte
}

func (r *memRoot) OnAdd(ctx context.Context) {
	for name, data := range r.files {
		file := &fs.MemRegularFile{Data: data, Attr: fuse.Attr{Mode: 0o644}}
		r.AddChild(name, r.NewPersistentInode(ctx, file, fs.StableAttr{}), false)
	}
}

// mountMem mounts files, served from memory, over the /dev/fuse loop.
func mountMem(t *testing.T, files map[string][]byte) (mnt string, s *Server) {
	t.Helper()
	return mountRoot(t, &memRoot{files: files})
}

// mountRoot mounts the file system under root over the /dev/fuse loop,
// and unmounts it when the test ends.
func mountRoot(t *testing.T, root fs.InodeEmbedder) (mnt string, s *Server) {
	t.Helper()
	requireFUSE(t)
	mnt = t.TempDir()
	logs := &syncWriter{}
	logger := log.New(logs, "", 0)
	raw := fs.NewNodeFS(root, &fs.Options{Logger: logger})
	s, err := Mount(mnt, raw, Options{Transport: TransportDevFUSE, Mount: fuse.MountOptions{
		FsName: "fuseloop-test", Name: "fuseloop", MaxWrite: testMaxWrite, Logger: logger}})
	require.NoError(t, err)
	// A request damaged in its buffer may never be answered: that must
	// fail the test, not hang it on its own mount.
	stopWatchdog, aborted := fstest.AbortAfter(mnt, 60*time.Second)
	t.Cleanup(func() {
		stopWatchdog()
		if aborted() {
			t.Error("the mount stopped answering; connection aborted")
		}
		assert.NoError(t, s.Unmount())
		out := logs.String()
		assert.NotContains(t, out, "panic")
		assert.NotContains(t, out, "splice a reply")
	})
	return mnt, s
}

func TestRestGivesBackTheReplyBuffersOfALargeRead(t *testing.T) {
	want := pattern(3, testMaxWrite-testMaxWrite%pageSize)
	mnt, server := mountMem(t, map[string][]byte{"big": want})
	got := readDirect(t, filepath.Join(mnt, "big"), len(want))
	require.True(t, bytes.Equal(want, got), "the large read read back differently")

	l := server.devLoop
	before, _ := readersResident(t, l)
	// The READ's reply filled most of one reader's reply buffer.
	require.Greater(t, before, len(want)/pageSize/2, "a %d-byte read left only %d reply pages resident", len(want), before)

	// The reply reaches the reader before its reader is done with it.
	waitNoReaderBusy(t, l)
	server.ReleaseIdleMemory()
	after, idle := readersResident(t, l)
	assert.Zero(t, after, "reply pages resident after the release (%d before)", before)
	assert.Zero(t, idle, "readers kept for spares after the release")

	// The buffers serve as before.
	got = readDirect(t, filepath.Join(mnt, "big"), len(want))
	assert.True(t, bytes.Equal(want, got), "a large read after the release read back differently")
}

// Releases while large reads and writes run must not lose a byte of a
// request or a reply: a release touches only buffers that no request is
// using.
func TestReleasesRacingLargeReadsAndWritesLoseNothing(t *testing.T) {
	const workers, rounds = 4, 12
	size := testMaxWrite - testMaxWrite%pageSize
	files := map[string][]byte{}
	for w := 0; w < workers; w++ {
		files[fmt.Sprintf("w%d", w)] = nil
	}
	mnt, server := mountMem(t, files)
	stop := make(chan struct{})
	released := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				released <- n
				return
			default:
			}
			server.ReleaseIdleMemory()
			n++
			time.Sleep(50 * time.Microsecond)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for round := 0; round < rounds; round++ {
				want := pattern(w*rounds+round, size)
				name := filepath.Join(mnt, fmt.Sprintf("w%d", w))
				if err := writeDirect(name, want); err != nil {
					errs <- err
					return
				}
				if got := readDirect(t, name, size); !bytes.Equal(got, want) {
					errs <- fmt.Errorf("worker %d round %d: the read through the mount came back differently", w, round)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	n := <-released
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Greater(t, n, rounds, "the releases did not run beside the requests")
}

// writeDirect writes data over a file's start through the mount with
// O_DIRECT, in WRITEs as large as the mount allows.
func writeDirect(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	raw := make([]byte, len(data)+pageSize)
	skip := (pageSize - int(uintptr(unsafe.Pointer(&raw[0])))%pageSize) % pageSize
	buf := raw[skip : skip+len(data)]
	copy(buf, data)
	if _, err := f.WriteAt(buf, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
