// Package sysx holds the raw Linux system calls the union layers need and
// the standard library does not wrap: openat2 confinement, renameat2 flags,
// reflink, sparse-aware copying and xattrs addressed through a directory fd.
//
// It owns no policy: callers decide what to do with each error.
package sysx

import (
	"errors"
	"fmt"
	"io"
	"syscall"

	"golang.org/x/sys/unix"
)

// OpenInRoot opens path relative to the directory fd root so that the
// resolution can never leave root, whatever symlinks the tree holds.
func OpenInRoot(root int, path string, flags int, mode uint32) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags) | unix.O_CLOEXEC,
		Mode:    uint64(mode),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	if flags&unix.O_CREAT == 0 && flags&unix.O_TMPFILE != unix.O_TMPFILE {
		how.Mode = 0
	}
	for {
		fd, err := unix.Openat2(root, path, &how)
		if err == unix.EINTR {
			continue
		}
		if err == unix.ENOSYS {
			// Kernels before 5.6: fall back to openat with O_NOFOLLOW on
			// the last component only.
			return unix.Openat(root, path, flags|unix.O_CLOEXEC, mode)
		}
		return fd, err
	}
}

// Rename renames oldpath (relative to olddir) to newpath (relative to
// newdir) with renameat2 flags such as unix.RENAME_NOREPLACE,
// unix.RENAME_EXCHANGE or unix.RENAME_WHITEOUT.
func Rename(olddir int, oldpath string, newdir int, newpath string, flags uint) error {
	return unix.Renameat2(olddir, oldpath, newdir, newpath, flags)
}

// Reflink makes dst share src's data blocks (FICLONE). It fails with
// EOPNOTSUPP, EXDEV or EINVAL where the filesystem cannot.
func Reflink(dst, src int) error {
	return unix.IoctlFileClone(dst, src)
}

// CopySparse copies size bytes of src into dst, which must be empty,
// keeping holes: it walks the data extents with SEEK_DATA/SEEK_HOLE and
// copies each with copy_file_range (falling back to read/write), then
// sets the length so a trailing hole stays a hole.
func CopySparse(dst, src int, size int64) error {
	var off int64
	for off < size {
		data, err := unix.Seek(src, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole is left
		}
		if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				// No SEEK_DATA support: the whole rest is data.
				data = off
			} else {
				return fmt.Errorf("seek data: %w", err)
			}
		}
		hole, err := unix.Seek(src, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if hole > size {
			hole = size
		}
		if err := copyRange(dst, src, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	if err := unix.Ftruncate(dst, size); err != nil {
		return fmt.Errorf("set length: %w", err)
	}
	return nil
}

// copyRange copies n bytes at off from src to dst at the same offset.
func copyRange(dst, src int, off, n int64) error {
	for n > 0 {
		in, out := off, off
		chunk := n
		if chunk > 1<<30 {
			chunk = 1 << 30
		}
		done, err := unix.CopyFileRange(src, &in, dst, &out, int(chunk), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || done == 0 {
			if err == nil || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) ||
				errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
				return copyRangeRW(dst, src, off, n)
			}
			return fmt.Errorf("copy_file_range: %w", err)
		}
		off += int64(done)
		n -= int64(done)
	}
	return nil
}

// copyRangeRW is copyRange by plain pread/pwrite.
func copyRangeRW(dst, src int, off, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		chunk := int64(len(buf))
		if chunk > n {
			chunk = n
		}
		got, err := unix.Pread(src, buf[:chunk], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if got == 0 {
			return fmt.Errorf("read: %w", io.ErrUnexpectedEOF)
		}
		if _, err := unix.Pwrite(dst, buf[:got], off); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		off += int64(got)
		n -= int64(got)
	}
	return nil
}

// Errno extracts the errno from a wrapped error; errors that carry none
// become EIO, the answer for an internal fault.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}

// FdPath names the object behind an open fd as /proc/self/fd/FD: the
// calls that take a name but no fd (utimensat on a read-only fd, an
// O_PATH reopen, linkat of an unnamed file) reach it through there.
func FdPath(fd int) string {
	return fmt.Sprintf("/proc/self/fd/%d", fd)
}
