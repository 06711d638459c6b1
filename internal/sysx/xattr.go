package sysx

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// The xattr system calls take no directory fd before Linux 6.13, so an
// object under a directory fd is named through /proc/self/fd. Reads name
// it as /proc/self/fd/ROOT/PATH and use the l* calls, which leave a
// final symlink alone: one system call, resolved as fstatat(ROOT, PATH)
// resolves it. Changes first open the object itself as O_PATH, with
// O_NOFOLLOW and confined to the root like every other open, and name
// that fd: three system calls, but nothing outside the root is ever
// changed, whatever a path holds.

// readPath names path under root for the l*xattr reads.
func readPath(root int, path string) (string, func(string, string, []byte) (int, error)) {
	if path == "" || path == "." {
		// The root itself: the magic link must be followed.
		return FdPath(root), unix.Getxattr
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", root, path), unix.Lgetxattr
}

// objectPath opens path under root as O_PATH and returns a name for it
// that the xattr calls accept, with the fd to close afterwards.
func objectPath(root int, path string) (string, int, error) {
	if path == "" || path == "." {
		return FdPath(root), -1, nil
	}
	fd, err := OpenInRoot(root, path, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", -1, err
	}
	return FdPath(fd), fd, nil
}

func closeFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// Getxattr reads attribute name of path under root into a new slice.
func Getxattr(root int, path, name string) ([]byte, error) {
	p, get := readPath(root, path)
	return readXattr(func(buf []byte) (int, error) { return get(p, name, buf) })
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
	p, get := readPath(root, path)
	return get(p, name, dest)
}

// HasAnyXattr reports whether path under root has one of the attributes
// names.
func HasAnyXattr(root int, path string, names ...string) bool {
	p, get := readPath(root, path)
	for _, name := range names {
		if _, err := get(p, name, nil); err == nil {
			return true
		}
	}
	return false
}

// entryPath names a single component directly under the open directory
// root for the l*xattr calls: nothing is traversed but root itself, and
// the entry is not followed, so it needs no confined open. ok is false
// for a longer path.
func entryPath(root int, path string) (string, bool) {
	if path == "" || path == "." || path == ".." || strings.Contains(path, "/") {
		return "", false
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", root, path), true
}

// Setxattr sets attribute name of path under root.
func Setxattr(root int, path, name string, value []byte, flags int) error {
	if p, ok := entryPath(root, path); ok {
		return unix.Lsetxattr(p, name, value, flags)
	}
	p, fd, err := objectPath(root, path)
	if err != nil {
		return err
	}
	defer closeFd(fd)
	return unix.Setxattr(p, name, value, flags)
}

// Removexattr removes attribute name of path under root.
func Removexattr(root int, path, name string) error {
	if p, ok := entryPath(root, path); ok {
		return unix.Lremovexattr(p, name)
	}
	p, fd, err := objectPath(root, path)
	if err != nil {
		return err
	}
	defer closeFd(fd)
	return unix.Removexattr(p, name)
}

// Listxattr lists the attribute names of path under root.
func Listxattr(root int, path string) ([]string, error) {
	p, _ := readPath(root, path)
	list := unix.Llistxattr
	if path == "" || path == "." {
		list = unix.Listxattr
	}
	buf := make([]byte, 1024)
	for {
		n, err := list(p, buf)
		if err == unix.ERANGE {
			size, err := list(p, nil)
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
	p, ok := entryPath(dirfd, name)
	if !ok {
		return nil, unix.EINVAL
	}
	return readXattr(func(buf []byte) (int, error) { return unix.Lgetxattr(p, attr, buf) })
}
