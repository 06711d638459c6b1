package fstest

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

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
		// A mount a process that just exited still held is busy for a
		// moment.
		var err error
		if WaitFor(Patience, func() bool { err = unix.Unmount(l.Mount, 0); return err == nil }) {
			return nil
		}
		return fmt.Errorf("unmount %s: %w", l.Mount, err)
	}, nil
}
