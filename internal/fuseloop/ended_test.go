package fuseloop

import (
	"log"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Options.Ended runs once per connection, after its last request and
// before Wait returns, whether the mount is unmounted from outside (the
// kernel ends the connection) or by Unmount; with every transport.
func TestEndedRunsOnceAfterTheLastRequestBeforeWaitReturns(t *testing.T) {
	for _, transport := range []string{TransportDevFUSE, TransportGoFUSE, TransportIOURing} {
		for _, from := range []string{"outside", "Unmount"} {
			t.Run(transport+" unmounted from "+from, func(t *testing.T) {
				requireFUSE(t)
				if transport == TransportIOURing {
					requireURing(t)
				}
				mnt := t.TempDir()
				var calls, requestsAfter atomic.Int32
				var ended atomic.Bool
				root := &memRoot{files: map[string][]byte{"f": []byte("data")}}
				raw := fs.NewNodeFS(root, &fs.Options{Logger: log.New(os.Stderr, "", 0)})
				counted := &requestCounter{RawFileSystem: raw, after: &requestsAfter, ended: &ended}
				s, err := Mount(mnt, counted, Options{Transport: transport, Ended: func() {
					calls.Add(1)
					ended.Store(true)
				}, Mount: fuse.MountOptions{FsName: "fuseloop-test", Name: "fuseloop", MaxWrite: testMaxWrite}})
				require.NoError(t, err)
				require.Equal(t, transport, s.Transport())
				data, err := os.ReadFile(filepath.Join(mnt, "f"))
				require.NoError(t, err)
				assert.Equal(t, "data", string(data))
				assert.Zero(t, calls.Load(), "Ended ran while the connection served")
				if from == "outside" {
					require.NoError(t, unix.Unmount(mnt, 0))
					s.Wait()
				} else {
					require.NoError(t, s.Unmount())
				}
				assert.Equal(t, int32(1), calls.Load(), "Ended ran once before Wait returned")
				assert.Zero(t, requestsAfter.Load(), "requests served after Ended")
			})
		}
	}
}

// requestCounter counts the lookups, getattrs and reads served once
// ended is set.
type requestCounter struct {
	fuse.RawFileSystem
	after *atomic.Int32
	ended *atomic.Bool
}

func (r *requestCounter) note() {
	if r.ended.Load() {
		r.after.Add(1)
	}
}

func (r *requestCounter) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	r.note()
	return r.RawFileSystem.Lookup(cancel, header, name, out)
}

func (r *requestCounter) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	r.note()
	return r.RawFileSystem.GetAttr(cancel, in, out)
}

func (r *requestCounter) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	r.note()
	return r.RawFileSystem.Read(cancel, in, buf)
}
