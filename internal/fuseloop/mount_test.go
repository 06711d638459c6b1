package fuseloop

import (
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requireFUSE skips unless this process can mount FUSE file systems.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root here (fusermount3 is exercised by the union's rootless tests)")
	}
}

// mounted is a loopback file system over a directory, mounted over one
// transport.
type mounted struct {
	dir    string // the directory served
	mnt    string // where it is mounted
	server *Server
}

// mountLoopback mounts a loopback of a fresh directory over transport,
// and unmounts it when the test ends.
func mountLoopback(t *testing.T, transport string) *mounted {
	t.Helper()
	requireFUSE(t)
	base := t.TempDir()
	m := &mounted{dir: filepath.Join(base, "dir"), mnt: filepath.Join(base, "mnt")}
	require.NoError(t, os.Mkdir(m.dir, 0o755))
	require.NoError(t, os.Mkdir(m.mnt, 0o755))
	root, err := fs.NewLoopbackRoot(m.dir)
	require.NoError(t, err)
	logs := &syncWriter{}
	logger := log.New(logs, "", 0)
	timeout := time.Duration(0)
	raw := fs.NewNodeFS(root, &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		Logger:       logger,
	})
	m.server, err = Mount(m.mnt, raw, Options{
		Transport: transport,
		Mount: fuse.MountOptions{
			FsName:      "fuseloop-test",
			Name:        "fuseloop",
			MaxWrite:    testMaxWrite,
			EnableLocks: true,
			Logger:      logger,
			Debug:       os.Getenv("FUSELOOP_TRACE") != "",
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, m.server.Unmount())
		if out := logs.String(); strings.Contains(out, "panic") || strings.Contains(out, "read from the FUSE device") {
			t.Errorf("the mount logged faults:\n%s", out)
		}
	})
	return m
}

// testMaxWrite is the largest request the test mounts take: 1 MiB less
// two pages, as the union asks for.
const testMaxWrite = 1<<20 - 2*pageSize

// servingTransports are the transports a test runs over: each that can
// serve here (io_uring falls back to dev-fuse where it cannot).
var servingTransports = []string{TransportDevFUSE, TransportGoFUSE, TransportAuto}

func TestMountReportsItsTransport(t *testing.T) {
	for _, transport := range servingTransports {
		t.Run(transport, func(t *testing.T) {
			m := mountLoopback(t, transport)
			require.NoError(t, os.WriteFile(filepath.Join(m.mnt, "f"), []byte("hello"), 0o644))
			data, err := os.ReadFile(filepath.Join(m.dir, "f"))
			require.NoError(t, err)
			assert.Equal(t, "hello", string(data))
			switch transport {
			case TransportGoFUSE, TransportDevFUSE:
				assert.Equal(t, transport, m.server.Transport())
				assert.Equal(t, "transport="+transport, m.server.WhyNotIOURing())
			case TransportAuto:
				if m.server.Transport() == TransportIOURing {
					assert.Empty(t, m.server.WhyNotIOURing())
				} else {
					assert.Equal(t, TransportDevFUSE, m.server.Transport())
					assert.NotEmpty(t, m.server.WhyNotIOURing(), "auto says why io_uring does not serve")
				}
			}
		})
	}
}
