package unionfs_test

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// Requests on one file race each other: readers opened on the lower file
// read and fstat while a writer copies the file up and appends, others
// chmod and utimes it, a rename takes its name away and gives it back,
// and names beside it come and go (the namespace lock taken for writing
// throughout). Handles switch to the upper copy, nameless-node setattrs
// go through open handles, and every lock order is exercised against
// the others: the run must end, in every I/O mode, with the data every
// reader saw being whole.
func TestRequestsOnOneFileRaceWithoutDeadlock(t *testing.T) {
	for _, opts := range [][]string{{"passthrough=on"}, {"passthrough=off"}, {"passthrough=off", "metacopy=on"}} {
		t.Run(fmt.Sprint(opts), func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			base := bytes.Repeat([]byte("lower data\n"), 400)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": string(base)})
			uniontest.Mount(t, l, opts...)
			f := l.Mount + "/f"

			const rounds = 200
			done := make(chan struct{})
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			fail := func(err error) {
				select {
				case errs <- err:
				default:
				}
			}
			worker := func(body func(i int) error) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < rounds; i++ {
						if err := body(i); err != nil {
							fail(err)
						}
					}
				}()
			}
			// Readers: open (maybe on the lower copy), read, fstat.
			for r := 0; r < 4; r++ {
				worker(func(i int) error {
					h, err := os.Open(f)
					if os.IsNotExist(err) {
						return nil // between the rename away and back
					}
					if err != nil {
						return err
					}
					defer h.Close()
					buf := make([]byte, len(base))
					n, err := h.ReadAt(buf, 0)
					if n < len("lower data\n") && err != nil {
						return fmt.Errorf("read: %v", err)
					}
					if !bytes.HasPrefix(buf[:n], []byte("lower data\n")) {
						return fmt.Errorf("read %q...: not the file's start", buf[:min(n, 20)])
					}
					_, err = h.Stat()
					return err
				})
			}
			// A writer appends (copying up at first).
			var appended atomic.Int32
			worker(func(i int) error {
				h, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
				if os.IsNotExist(err) {
					return nil
				}
				if err != nil {
					return err
				}
				defer h.Close()
				if _, err = h.WriteString("appended\n"); err == nil {
					appended.Add(1)
				}
				return err
			})
			// Metadata changes by name.
			worker(func(i int) error {
				if err := os.Chmod(f, 0o640+os.FileMode(i%2)); err != nil && !os.IsNotExist(err) {
					return err
				}
				now := time.Now()
				if err := os.Chtimes(f, now, now); err != nil && !os.IsNotExist(err) {
					return err
				}
				return nil
			})
			// The name goes away and comes back; names beside it come
			// and go (ns for writing).
			worker(func(i int) error {
				if err := os.Rename(f, f+".away"); err != nil && !os.IsNotExist(err) {
					return err
				}
				if err := os.Rename(f+".away", f); err != nil && !os.IsNotExist(err) {
					return err
				}
				other := fmt.Sprintf("%s/other%d", l.Mount, i)
				if err := os.WriteFile(other, []byte("o"), 0o644); err != nil {
					return err
				}
				return unix.Unlink(other)
			})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("racing requests on one file did not finish in 60 s: a deadlock")
			}
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			assert.True(t, bytes.HasPrefix(data, base), "the lower data stays whole")
			assert.Equal(t, int(appended.Load()), bytes.Count(data, []byte("appended\n")), "every append landed once")
		})
	}
}
