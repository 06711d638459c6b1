package fuseloop

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// pattern is size bytes that differ at every offset and between seeds.
func pattern(seed, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + i>>12 + seed*13)
	}
	return b
}

func TestDataAroundPageRequestAndMaxWriteBoundariesReadsBackExactly(t *testing.T) {
	sizes := []int{0, 1, pageSize - 1, pageSize, pageSize + 1,
		128<<10 - 1, 128 << 10, 128<<10 + 1,
		testMaxWrite - 1, testMaxWrite, testMaxWrite + 1,
		1 << 20, 3*testMaxWrite + 7}
	for _, transport := range servingTransports {
		t.Run(transport, func(t *testing.T) {
			m := mountLoopback(t, transport)
			for i, size := range sizes {
				name := fmt.Sprintf("f%d", size)
				want := pattern(i, size)
				require.NoError(t, os.WriteFile(filepath.Join(m.mnt, name), want, 0o644))
				got, err := os.ReadFile(filepath.Join(m.mnt, name))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(want, got), "%d bytes through the mount read back as %d different bytes", size, len(got))
				got, err = os.ReadFile(filepath.Join(m.dir, name))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(want, got), "%d bytes through the mount landed as %d different bytes", size, len(got))
			}
			// One write and one read as large as a request may carry,
			// at an offset that is not page aligned.
			f, err := os.OpenFile(filepath.Join(m.mnt, "big"), os.O_RDWR|os.O_CREATE, 0o644)
			require.NoError(t, err)
			defer f.Close()
			want := pattern(99, testMaxWrite)
			n, err := f.WriteAt(want, 4097)
			require.NoError(t, err)
			require.Equal(t, len(want), n)
			got := make([]byte, len(want))
			n, err = f.ReadAt(got, 4097)
			require.NoError(t, err)
			assert.Equal(t, len(want), n)
			assert.True(t, bytes.Equal(want, got), "a max_write request at offset 4097 reads back differently")
		})
	}
}

// A record is a file content that says whether it is whole: its length,
// its writer, and a digest of both and its body.
func record(writer, round, size int) []byte {
	body := pattern(writer*1000+round, size)
	head := make([]byte, 16)
	binary.LittleEndian.PutUint64(head, uint64(size))
	binary.LittleEndian.PutUint64(head[8:], uint64(writer))
	sum := sha256.Sum256(append(head, body...))
	return append(append(head, body...), sum[:]...)
}

func recordIsWhole(b []byte) bool {
	if len(b) < 16+sha256.Size {
		return false
	}
	size := binary.LittleEndian.Uint64(b)
	if uint64(len(b)) != 16+size+sha256.Size {
		return false
	}
	sum := sha256.Sum256(b[:16+size])
	return bytes.Equal(sum[:], b[16+size:])
}

func TestRacingCreatesWritesReadsRenamesAndUnlinksOnTheSameFiles(t *testing.T) {
	for _, transport := range servingTransports {
		t.Run(transport, func(t *testing.T) {
			m := mountLoopback(t, transport)
			const workers, rounds, names = 8, 60, 3
			var wg sync.WaitGroup
			errs := make(chan error, workers*rounds)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for r := 0; r < rounds; r++ {
						shared := filepath.Join(m.mnt, fmt.Sprintf("shared%d", (w+r)%names))
						// A whole record under a private name, then
						// renamed over a shared one: readers of a
						// shared name see only whole records.
						private := filepath.Join(m.mnt, fmt.Sprintf("w%d", w))
						rec := record(w, r, (w*4099+r*577)%(300<<10))
						if err := os.WriteFile(private, rec, 0o644); err != nil {
							errs <- err
							return
						}
						if got, err := os.ReadFile(private); err != nil || !bytes.Equal(got, rec) {
							errs <- fmt.Errorf("worker %d round %d: own file reads back %d bytes (%v)", w, r, len(got), err)
							return
						}
						if err := os.Rename(private, shared); err != nil {
							errs <- err
							return
						}
						got, err := os.ReadFile(shared)
						switch {
						case errors.Is(err, os.ErrNotExist):
						case err != nil:
							errs <- err
							return
						case !recordIsWhole(got):
							errs <- fmt.Errorf("worker %d round %d: %s holds a torn record of %d bytes", w, r, shared, len(got))
							return
						}
						if r%5 == 4 {
							if err := os.Remove(shared); err != nil && !errors.Is(err, os.ErrNotExist) {
								errs <- err
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			// What is left is whole in the directory underneath too.
			entries, err := os.ReadDir(m.dir)
			require.NoError(t, err)
			for _, e := range entries {
				data, err := os.ReadFile(filepath.Join(m.dir, e.Name()))
				require.NoError(t, err)
				assert.True(t, recordIsWhole(data), "%s is torn underneath", e.Name())
			}
		})
	}
}

func TestARequestWaitingForALockDoesNotStopOthers(t *testing.T) {
	for _, transport := range servingTransports {
		t.Run(transport, func(t *testing.T) {
			if transport == TransportGoFUSE {
				t.Skip("go-fuse's loop stops serving while a lock request waits on this machine (the reason for the own loop, issue 20)")
			}
			m := mountLoopback(t, transport)
			path := filepath.Join(m.mnt, "locked")
			require.NoError(t, os.WriteFile(path, []byte("x"), 0o644))
			holder, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer holder.Close()
			waiter, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer waiter.Close()
			// Open file description locks: the two opens are two
			// owners, though one process holds both.
			lock := func(f *os.File, cmd int, typ int16) error {
				return unix.FcntlFlock(f.Fd(), cmd, &unix.Flock_t{Type: typ, Whence: 0, Start: 0, Len: 0})
			}
			require.NoError(t, lock(holder, unix.F_OFD_SETLK, unix.F_WRLCK))
			got := make(chan error, 1)
			go func() {
				runtime.LockOSThread() // the wait blocks a thread in the kernel
				got <- lock(waiter, unix.F_OFD_SETLKW, unix.F_WRLCK)
			}()
			// While the daemon waits for the lock on the waiter's
			// behalf, other requests are served: names, data, and
			// the unlock that ends the wait.
			for i := 0; i < 20; i++ {
				name := filepath.Join(m.mnt, fmt.Sprintf("other%d", i))
				require.NoError(t, os.WriteFile(name, pattern(i, 5000), 0o644))
				data, err := os.ReadFile(name)
				require.NoError(t, err)
				require.Equal(t, pattern(i, 5000), data)
			}
			select {
			case err := <-got:
				t.Fatalf("the lock was granted while held (%v)", err)
			default:
			}
			require.NoError(t, lock(holder, unix.F_OFD_SETLK, unix.F_UNLCK))
			assert.NoError(t, <-got, "the waiter gets the lock once it is released")
		})
	}
}

func TestUnmountWhileRequestsRun(t *testing.T) {
	for _, transport := range servingTransports {
		t.Run(transport, func(t *testing.T) {
			m := mountLoopback(t, transport)
			require.NoError(t, os.WriteFile(filepath.Join(m.mnt, "f"), pattern(1, 10000), 0o644))
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						var st unix.Stat_t
						unix.Stat(filepath.Join(m.mnt, "f"), &st)
						unix.Stat(filepath.Join(m.mnt, "missing"), &st)
					}
				}()
			}
			// In-flight lookups hold the mount for a moment: a busy
			// mount refuses to go, so try until it goes.
			var err error
			for try := 0; try < 100; try++ {
				if err = m.server.Unmount(); err == nil {
					break
				}
			}
			close(stop)
			wg.Wait()
			require.NoError(t, err)
			m.server.Wait() // returns: the connection has ended
			assert.NoError(t, m.server.Unmount(), "a second unmount is a no-op")
			var st unix.Stat_t
			require.NoError(t, unix.Stat(m.mnt, &st))
			_, err = os.Stat(filepath.Join(m.mnt, "f"))
			assert.ErrorIs(t, err, os.ErrNotExist, "the mount point is an empty directory again")
		})
	}
}

// Files of the mount opened by this process's own runtime poller (as
// os.Open does) while garbage collections run: before POLL was turned off
// at mount, the first of them hung the process and the mount together.
func TestFilesOpenedThroughTheRuntimePollerWhileCollecting(t *testing.T) {
	for _, transport := range servingTransports {
		t.Run(transport, func(t *testing.T) {
			m := mountLoopback(t, transport)
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case <-stop:
						return
					default:
						runtime.GC()
					}
				}
			}()
			for i := 0; i < 50; i++ {
				name := filepath.Join(m.mnt, fmt.Sprintf("f%d", i))
				require.NoError(t, os.WriteFile(name, []byte("data"), 0o644))
				f, err := os.Open(name)
				require.NoError(t, err)
				buf := make([]byte, 8)
				n, err := f.Read(buf)
				require.NoError(t, err)
				assert.Equal(t, "data", string(buf[:n]))
				require.NoError(t, f.Close())
			}
			close(stop)
			<-done
		})
	}
}
