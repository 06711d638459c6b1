package fuseloop

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestURingRacingWritersAndReadersOnTheSameFilesSeeOnlyWholeContents(t *testing.T) {
	m := mountURing(t, nil)
	cpus := allowedCPUs(t)
	const workers = 8
	names := []string{"a", "b", "c", "d"}
	contents := make([][]byte, workers)
	for w := range contents {
		contents[w] = bytes.Repeat([]byte{byte('A' + w)}, 3*4096+w*1000)
	}

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			onCPU(t, cpus[w%len(cpus)], func() {
				rng := rand.New(rand.NewPCG(uint64(w), 7))
				for i := range 150 {
					name := filepath.Join(m.dir, names[rng.IntN(len(names))])
					var err error
					switch rng.IntN(5) {
					case 0: // replace whole: write aside, rename over
						tmp := fmt.Sprintf("%s.tmp%d", name, w)
						if err = os.WriteFile(tmp, contents[w], 0o644); err == nil {
							err = os.Rename(tmp, name)
						}
					case 1:
						var got []byte
						if got, err = os.ReadFile(name); err == nil && !slices.ContainsFunc(contents, func(c []byte) bool { return bytes.Equal(c, got) }) {
							t.Errorf("worker %d step %d: %s holds %d bytes that no writer wrote", w, i, name, len(got))
						}
					case 2:
						_, err = os.Stat(name)
					case 3:
						err = os.Remove(name)
					case 4:
						_, err = os.ReadDir(m.dir)
					}
					if err != nil && !errors.Is(err, os.ErrNotExist) {
						t.Errorf("worker %d step %d: %v", w, i, err)
					}
				}
			})
		}()
	}
	wg.Wait()

	listing := func(dir string) (names []string) {
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	assert.Equal(t, listing(m.backing), listing(m.dir), "the mount lists what the backing dir holds")
	for _, name := range listing(m.dir) {
		got, err := os.ReadFile(filepath.Join(m.dir, name))
		require.NoError(t, err)
		assert.True(t, slices.ContainsFunc(contents, func(c []byte) bool { return bytes.Equal(c, got) }), "%s is one writer's whole content", name)
	}
	for _, s := range m.tr.Stats() {
		if slices.Contains(cpus, s.CPU) {
			assert.NotZero(t, s.Served, "queue of CPU %d served its callers", s.CPU)
		}
	}
	assert.Empty(t, m.devRequests(), "only FORGET and INTERRUPT may come through /dev/fuse")
}

// waitingLookups holds lookups of names starting with "wait-" until
// release is closed, as a lock wait in the union would.
type waitingLookups struct {
	fuse.RawFileSystem
	entered chan string
	release chan struct{}
}

func (w *waitingLookups) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if strings.HasPrefix(name, "wait-") {
		w.entered <- name
		<-w.release
	}
	return w.RawFileSystem.Lookup(cancel, h, name, out)
}

func TestURingALockWaitOnCPU0DoesNotStallOtherRequestsOnCPU0(t *testing.T) {
	cpus := allowedCPUs(t)
	if !slices.Contains(cpus, 0) {
		t.Skip("needs to run on CPU 0")
	}
	w := &waitingLookups{entered: make(chan string, 1), release: make(chan struct{})}
	m := mountURing(t, func(raw fuse.RawFileSystem) fuse.RawFileSystem { w.RawFileSystem = raw; return w })
	// Another directory, so that the waiting lookup's hold on the root's
	// inode lock does not stop these requests in the kernel.
	other := filepath.Join(m.dir, "other")
	require.NoError(t, os.Mkdir(other, 0o755))
	released := false
	defer func() {
		if !released {
			close(w.release)
		}
	}()

	waited := make(chan error, 1)
	go onCPU(t, 0, func() {
		_, err := os.Stat(filepath.Join(m.dir, "wait-1"))
		waited <- err
	})
	select {
	case <-w.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the lookup never reached the filesystem")
	}
	before := m.tr.Stats()[0].Served

	done := make(chan error, 1)
	go onCPU(t, 0, func() {
		for i := range 50 {
			p := filepath.Join(other, fmt.Sprint(i))
			data := []byte(strings.Repeat(fmt.Sprint(i), 100))
			if err := os.WriteFile(p, data, 0o644); err != nil {
				done <- err
				return
			}
			got, err := os.ReadFile(p)
			if err == nil && !bytes.Equal(got, data) {
				err = fmt.Errorf("%s reads back %q", p, got)
			}
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	})
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(60 * time.Second):
		t.Fatal("requests on CPU 0 stalled behind a lookup waiting on a lock")
	}
	stats := m.tr.Stats()[0]
	assert.GreaterOrEqual(t, stats.Served-before, uint64(50*3), "CPU 0's queue answered them")
	assert.GreaterOrEqual(t, stats.Threads, 2, "CPU 0's queue got a second thread")

	close(w.release)
	released = true
	select {
	case err := <-waited:
		assert.ErrorIs(t, err, os.ErrNotExist, "the waiting lookup ends with its own answer")
	case <-time.After(30 * time.Second):
		t.Fatal("the released lookup never answered")
	}
}
