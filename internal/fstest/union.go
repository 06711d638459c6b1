package fstest

import (
	"bytes"
	"log"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/unionmount/unionmount/unionfs"
)

// syncBuffer collects the daemon's log lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// MountUnion mounts unionmount in this process over l, with extra -o
// options, and unmounts it at cleanup. Set UNIONMOUNT_TRACE=1 to trace
// FUSE operations. A test whose mount logged an internal fault fails.
func MountUnion(t testing.TB, l *Layers, extra ...string) *unionfs.FS {
	t.Helper()
	RequireFUSE(t)
	opts, err := unionfs.ParseOptions(append([]string{l.OverlayOptions()}, extra...))
	if err != nil {
		t.Fatalf("options: %v", err)
	}
	if err := opts.Validate(l.Mount); err != nil {
		t.Fatalf("options: %v", err)
	}
	opts.Debug = os.Getenv("UNIONMOUNT_TRACE") != ""
	logs := &syncBuffer{}
	server, ufs, err := unionfs.Mount(l.Mount, opts, log.New(logs, "", 0))
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		var err error
		for i := 0; i < 50; i++ {
			if err = server.Unmount(); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("unmount %s: %v", l.Mount, err)
			return
		}
		server.Wait()
		ufs.Close()
		if out := logs.String(); strings.Contains(out, "internal") || strings.Contains(out, "panic") {
			t.Errorf("the mount logged faults:\n%s", out)
		}
	})
	return ufs
}
