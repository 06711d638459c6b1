package fstest

import (
	"bytes"
	"sync"
	"testing"
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
func MountUnion(t testing.TB, l *Layers, extra ...string) *Mounted {
	t.Helper()
	RequireFUSE(t)
	m, err := StartUnion(l, extra...)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return m
}
