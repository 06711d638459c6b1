// Package uniontest mounts unionmount in the test process, for the tests
// of unionfs and of the packages that need a union to check their work.
// It is the union-specific half of the test helpers; internal/fstest holds
// the generic half (layers, trees, kernel overlay, requirements), so that
// a package's tests build the union only when they mount one.
//
// A union served in the test process must not be page-faulted or
// executed from that process: a thread faulting on a mapped file of the
// mount, or a forked child's execve of one, waits on the FUSE server in a
// state the Go runtime cannot stop for a garbage collection, which then
// stops the server too. mmap and exec such files from a process of their
// own (python3, /bin/sh -c 'exec ...').
package uniontest

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/unionmount/unionmount/internal/fstest"
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

// Mount mounts unionmount in this process over l, with extra -o
// options, and unmounts it at cleanup. Set UNIONMOUNT_TRACE=1 to trace
// FUSE operations. A test whose mount logged an internal fault fails.
func Mount(t testing.TB, l *fstest.Layers, extra ...string) *Mounted {
	t.Helper()
	return MountAt(t, l.Mount, append([]string{l.EscapedOptions()}, extra...)...)
}

// Mounted is a union served by this process, for tests that manage the
// mount's lifetime themselves (many mounts in one randomized test).
type Mounted struct {
	// FS is the mounted union, for tests that look at its counters.
	FS    *unionfs.FS
	dir   string
	stop  func() error
	logs  *syncBuffer
	wait  func()
	close func()
}

// Start mounts unionmount over l with extra -o options.
func Start(l *fstest.Layers, extra ...string) (*Mounted, error) {
	return StartAt(l.Mount, append([]string{l.EscapedOptions()}, extra...)...)
}

// MountAt mounts unionmount at mountpoint with the given -o options
// alone (an aufs br= mount names its branches itself), and unmounts it
// at cleanup.
func MountAt(t testing.TB, mountpoint string, options ...string) *Mounted {
	t.Helper()
	fstest.RequireFUSE(t)
	m, err := StartAt(mountpoint, options...)
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

// StartAt mounts unionmount at mountpoint with the given -o options.
func StartAt(mountpoint string, options ...string) (*Mounted, error) {
	opts, err := unionfs.ParseOptions(options)
	if err != nil {
		return nil, err
	}
	if err := opts.Validate(mountpoint); err != nil {
		return nil, err
	}
	trace := os.Getenv("UNIONMOUNT_TRACE") != ""
	opts.Debug = opts.Debug || trace
	logs := &syncBuffer{}
	var logTo io.Writer = logs
	if trace {
		logTo = io.MultiWriter(logs, os.Stderr) // the trace, as it happens
	}
	server, ufs, err := unionfs.Mount(mountpoint, opts, log.New(logTo, "", 0))
	if err != nil {
		return nil, err
	}
	return &Mounted{FS: ufs, dir: mountpoint, stop: server.Unmount, logs: logs, wait: server.Wait, close: func() {
		server.Wait()
		ufs.Close()
	}}, nil
}

// Unmount unmounts the union; it fails if the unmount does, or if the
// mount logged an internal fault.
func (m *Mounted) Unmount() error {
	// A mount a process that just exited still held is busy for a moment.
	var err error
	if !fstest.WaitFor(fstest.Patience, func() bool { err = m.stop(); return err == nil }) {
		return fmt.Errorf("unmount %s: %w", m.dir, err)
	}
	m.close()
	if out := m.logs.String(); strings.Contains(out, "internal") || strings.Contains(out, "panic") {
		return fmt.Errorf("the mount logged faults:\n%s", out)
	}
	return nil
}

// Wait returns once the connection has ended (unmounted from outside)
// and the server has let go of it, as a daemon does before it exits.
// Unmount still cleans up after it.
func (m *Mounted) Wait() { m.wait() }

// Logs returns what the mount has logged so far.
func (m *Mounted) Logs() string { return m.logs.String() }
