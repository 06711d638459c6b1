package sysx

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// ReadNames lists the directory dir under root ("" or "." for root
// itself) without following a symlink in its last component.
func ReadNames(root int, dir string) ([]string, error) {
	if dir == "" {
		dir = "."
	}
	fd, err := unix.Openat(root, dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var names []string
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", dir, err)
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// RemoveAllAt removes path under root (a directory fd) and everything
// below it, never following a symlink out of root. A path that is not
// there is no error.
func RemoveAllAt(root int, path string) error {
	return removeAllAt(root, strings.TrimPrefix(path, "/"))
}

func removeAllAt(root int, path string) error {
	err := unix.Unlinkat(root, path, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	names, err := ReadNames(root, path)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := removeAllAt(root, path+"/"+n); err != nil {
			return err
		}
	}
	if err := unix.Unlinkat(root, path, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
