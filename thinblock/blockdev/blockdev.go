// Package blockdev is the I/O under a thin pool: a Device (a file, a
// block device, or memory), fixed 4 KiB metadata blocks on it, checksums
// over block contents, and the fault-injection seam crash tests use: the
// in-memory device can lose every write that was not synced.
//
// It knows nothing of what the blocks hold.
package blockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// BlockSize is the size of a metadata block.
const BlockSize = 4096

// ErrCrashed is returned by every call on a device after a simulated
// crash.
var ErrCrashed = errors.New("device crashed (simulated)")

// Device is byte-addressed storage that is durable after Sync.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	// Size is the device's length in bytes.
	Size() (int64, error)
	// Truncate sets the length (files only grow or shrink sparsely).
	Truncate(size int64) error
	Close() error
}

// ReadBlock reads metadata block n; past the end of the device it reads
// zeros.
func ReadBlock(d Device, n uint64, buf []byte) error {
	got, err := d.ReadAt(buf[:BlockSize], int64(n)*BlockSize)
	if got < BlockSize {
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read metadata block %d: %w", n, err)
		}
		clear(buf[got:BlockSize])
	}
	return nil
}

// WriteBlock writes metadata block n.
func WriteBlock(d Device, n uint64, buf []byte) error {
	if _, err := d.WriteAt(buf[:BlockSize], int64(n)*BlockSize); err != nil {
		return fmt.Errorf("write metadata block %d: %w", n, err)
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the crc32c of data, salted per kind of block so one kind
// cannot pass for another.
func Checksum(data []byte, salt uint32) uint32 {
	return crc32.Update(salt, castagnoli, data)
}

// Seal writes the checksum of block[4:] into block[0:4].
func Seal(block []byte, salt uint32) {
	binary.LittleEndian.PutUint32(block[0:4], Checksum(block[4:BlockSize], salt))
}

// Verify checks a block sealed by Seal.
func Verify(block []byte, salt uint32) bool {
	return binary.LittleEndian.Uint32(block[0:4]) == Checksum(block[4:BlockSize], salt)
}

// File is a Device on a file or a block device.
type File struct {
	*os.File
}

// OpenFile opens path; with create it must not exist yet.
func OpenFile(path string, create bool) (*File, error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, err
	}
	return &File{f}, nil
}

// Zeroer is a Device that can make a range read as zeros without
// writing them.
type Zeroer interface {
	ZeroRange(off, n int64) error
	// IsHole reports a range that already reads as zeros.
	IsHole(off, n int64) bool
}

// ZeroRange punches a hole in a file (it then reads as zeros); block
// devices and filesystems without hole punching answer EOPNOTSUPP.
func (f *File) ZeroRange(off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// Copier is a Device that can copy a range inside itself without the
// data passing through the caller.
type Copier interface {
	// CopyRange fails with ErrNoCopyRange where the device cannot.
	CopyRange(dst, src, n int64) error
}

// ErrNoCopyRange says the device cannot copy in place: copy through
// memory instead.
var ErrNoCopyRange = errors.New("in-place copy not supported")

// CopyRange copies n bytes at src to dst inside the file, in the kernel
// (copy_file_range: a page cache copy, or shared extents where the
// filesystem can).
func (f *File) CopyRange(dst, src, n int64) error {
	fd := int(f.Fd())
	for n > 0 {
		roff, woff := src, dst
		got, err := unix.CopyFileRange(fd, &roff, fd, &woff, int(n), 0)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EXDEV || err == unix.EOPNOTSUPP || err == unix.ENOSYS || err == unix.EINVAL {
			return fmt.Errorf("%w: %v", ErrNoCopyRange, err)
		}
		if err != nil {
			return fmt.Errorf("copy %d bytes at %d to %d: %w", n, src, dst, err)
		}
		if got == 0 {
			return fmt.Errorf("copy %d bytes at %d to %d: %w", n, src, dst, io.ErrUnexpectedEOF)
		}
		src, dst, n = src+int64(got), dst+int64(got), n-int64(got)
	}
	return nil
}

// IsHole reports whether [off, off+n) of a file holds no data (a
// hole, or past the end), so it reads as zeros already. Asking costs a
// shared lock of the inode, where punching a hole costs a journal
// transaction; false when the filesystem cannot tell.
func (f *File) IsHole(off, n int64) bool {
	next, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err == unix.ENXIO {
		return true // no data from off to the end
	}
	return err == nil && next >= off+n
}

// Size reports the file's length, or a block device's capacity.
func (f *File) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Mode()&os.ModeDevice != 0 {
		return f.Seek(0, io.SeekEnd)
	}
	return st.Size(), nil
}
