package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loopHolder is a loop device backed by a file of a mount.
type loopHolder struct {
	dev  string // /dev/loopN
	file string // the backing file
}

func (h loopHolder) String() string {
	return fmt.Sprintf("%s holds volume %s (%s)", h.dev, filepath.Base(h.file), h.file)
}

// loopHolders lists the loop devices whose backing file is inside mnt,
// from /sys/block/loop*/loop/backing_file.
func loopHolders(mnt string) []loopHolder {
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	prefix := filepath.Clean(mnt) + "/"
	var out []loopHolder
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// The kernel may append " (deleted)" to a file gone since.
		file := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if strings.HasPrefix(file, prefix) {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
			out = append(out, loopHolder{dev: dev, file: file})
		}
	}
	return out
}

func describeHolders(hs []loopHolder) string {
	if len(hs) == 0 {
		return "no loop device holds a volume file, so a process has one open (fuser -m shows which)"
	}
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.String()
	}
	return strings.Join(parts, "; ")
}

// detachLoop asks the kernel to detach a loop device (LOOP_CLR_FD, what
// losetup -d does). A device nobody else has open goes at once; one still
// open (a mounted filesystem) is only marked to go at its last close.
// It reports whether the device is gone.
func detachLoop(dev string) (bool, error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
	unix.Close(fd)
	if err != nil {
		return false, err
	}
	sys := "/sys/block/" + filepath.Base(dev) + "/loop"
	for i := 0; i < 20; i++ {
		if _, err := os.Stat(sys); err != nil {
			return true, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false, nil
}

// abortFUSE aborts the FUSE connection of the mount whose device number
// is dev, so every request still coming in fails at once and the server
// stops reading.
func abortFUSE(dev uint64) error {
	const dir = "/sys/fs/fuse/connections"
	path := fmt.Sprintf("%s/%d/abort", dir, unix.Minor(dev))
	if _, err := os.Stat(path); os.IsNotExist(err) {
		// The control filesystem is not always mounted.
		if err := unix.Mount("fusectl", dir, "fusectl", 0, ""); err != nil {
			return fmt.Errorf("mount fusectl on %s: %w", dir, err)
		}
	}
	return os.WriteFile(path, []byte("1"), 0)
}
