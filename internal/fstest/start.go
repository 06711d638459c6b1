package fstest

import (
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/unionfs"
)

// Mounted is a union served by this process, for tests that manage the
// mount's lifetime themselves (many mounts in one randomized test).
type Mounted struct {
	// FS is the mounted union, for tests that look at its counters.
	FS    *unionfs.FS
	dir   string
	stop  func() error
	logs  *syncBuffer
	close func()
}

// StartUnion mounts unionmount over l with extra -o options.
func StartUnion(l *Layers, extra ...string) (*Mounted, error) {
	opts, err := unionfs.ParseOptions(append([]string{l.escapedOptions()}, extra...))
	if err != nil {
		return nil, err
	}
	if err := opts.Validate(l.Mount); err != nil {
		return nil, err
	}
	opts.Debug = os.Getenv("UNIONMOUNT_TRACE") != ""
	logs := &syncBuffer{}
	server, ufs, err := unionfs.Mount(l.Mount, opts, log.New(logs, "", 0))
	if err != nil {
		return nil, err
	}
	return &Mounted{FS: ufs, dir: l.Mount, stop: server.Unmount, logs: logs, close: func() {
		server.Wait()
		ufs.Close()
	}}, nil
}

// Unmount unmounts the union; it fails if the unmount does, or if the
// mount logged an internal fault.
func (m *Mounted) Unmount() error {
	var err error
	for i := 0; i < 50; i++ {
		if err = m.stop(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", m.dir, err)
	}
	m.close()
	if out := m.logs.String(); strings.Contains(out, "internal") || strings.Contains(out, "panic") {
		return fmt.Errorf("the mount logged faults:\n%s", out)
	}
	return nil
}

// StartKernelOverlay mounts kernel overlay over l; the returned function
// unmounts it.
func StartKernelOverlay(l *Layers, extra ...string) (func() error, error) {
	opts := append([]string{l.OverlayOptions()}, extra...)
	if InUserNamespace() {
		// Trusted xattrs need privilege in the initial namespace.
		opts = append(opts, "userxattr")
	}
	if err := unix.Mount("overlay", l.Mount, "overlay", 0, strings.Join(opts, ",")); err != nil {
		return nil, fmt.Errorf("mount kernel overlay: %w", err)
	}
	return func() error {
		var err error
		for i := 0; i < 50; i++ {
			if err = unix.Unmount(l.Mount, 0); err == nil {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		return fmt.Errorf("unmount %s: %w", l.Mount, err)
	}, nil
}

// Logs returns what the mount has logged so far.
func (m *Mounted) Logs() string { return m.logs.String() }
