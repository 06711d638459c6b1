package sysx

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// The xattr system calls take no directory fd before Linux 6.13, so an
// object under a directory fd is named through /proc/self/fd: an O_PATH
// fd of the object itself, opened with O_NOFOLLOW so a symlink's own
// xattrs are reached, and confined to the layer like every other open.

// objectPath opens path under root as O_PATH and returns a name for it
// that the l*xattr calls accept, with the fd to close afterwards.
func objectPath(root int, path string) (string, int, error) {
	if path == "" || path == "." {
		return fmt.Sprintf("/proc/self/fd/%d", root), -1, nil
	}
	fd, err := OpenInRoot(root, path, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", -1, err
	}
	return fmt.Sprintf("/proc/self/fd/%d", fd), fd, nil
}

func closeFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// Getxattr reads attribute name of path under root into a new slice.
func Getxattr(root int, path, name string) ([]byte, error) {
	p, fd, err := objectPath(root, path)
	if err != nil {
		return nil, err
	}
	defer closeFd(fd)
	return getxattrPath(p, name)
}

func getxattrPath(p, name string) ([]byte, error) {
	return readXattr(func(buf []byte) (int, error) { return unix.Getxattr(p, name, buf) })
}

// readXattr calls get with a buffer large enough for the value (get
// with an empty buffer asks for the size).
func readXattr(get func(buf []byte) (int, error)) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := get(buf)
		if err == unix.ERANGE {
			size, err := get(nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, size+64)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// GetxattrInto reads attribute name into dest, as getxattr(2) does:
// a nil or empty dest asks for the size only.
func GetxattrInto(root int, path, name string, dest []byte) (int, error) {
	p, fd, err := objectPath(root, path)
	if err != nil {
		return 0, err
	}
	defer closeFd(fd)
	return unix.Getxattr(p, name, dest)
}

// HasAnyXattr reports whether path under root has one of the attributes
// names, with one open for all of them.
func HasAnyXattr(root int, path string, names ...string) bool {
	p, fd, err := objectPath(root, path)
	if err != nil {
		return false
	}
	defer closeFd(fd)
	for _, name := range names {
		if _, err := unix.Getxattr(p, name, nil); err == nil {
			return true
		}
	}
	return false
}

// Setxattr sets attribute name of path under root.
func Setxattr(root int, path, name string, value []byte, flags int) error {
	p, fd, err := objectPath(root, path)
	if err != nil {
		return err
	}
	defer closeFd(fd)
	return unix.Setxattr(p, name, value, flags)
}

// Removexattr removes attribute name of path under root.
func Removexattr(root int, path, name string) error {
	p, fd, err := objectPath(root, path)
	if err != nil {
		return err
	}
	defer closeFd(fd)
	return unix.Removexattr(p, name)
}

// Listxattr lists the attribute names of path under root.
func Listxattr(root int, path string) ([]string, error) {
	p, fd, err := objectPath(root, path)
	if err != nil {
		return nil, err
	}
	defer closeFd(fd)
	buf := make([]byte, 1024)
	for {
		n, err := unix.Listxattr(p, buf)
		if err == unix.ERANGE {
			size, err := unix.Listxattr(p, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, size+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

// GetxattrAt reads attribute attr of the entry name (one path component,
// never followed if a symlink) of the open directory dirfd: one system
// call, where Getxattr needs three.
func GetxattrAt(dirfd int, name, attr string) ([]byte, error) {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return nil, unix.EINVAL
	}
	p := fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
	return readXattr(func(buf []byte) (int, error) { return unix.Lgetxattr(p, attr, buf) })
}
