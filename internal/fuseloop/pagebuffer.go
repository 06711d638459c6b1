package fuseloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// A pageBuffer is a request or reply buffer mapped outside the Go heap.
// A reader's buffers are as large as the biggest WRITE or READ (a MiB
// and more), but most requests touch a page of them: on the heap they
// would count toward every collection's goal and stay resident after
// one large read, where a mapping of its own gives its pages back with
// one madvise while its reader waits.
type pageBuffer struct {
	// mapping is the whole anonymous mapping; nil when mapping failed
	// and data is on the heap instead.
	mapping []byte
	// data is the buffer: size bytes whose byte at the offset asked
	// for starts a page.
	data []byte
}

// newPageBuffer returns a size-byte buffer whose byte at offset is on a
// page boundary, so that a layer file opened O_DIRECT can be written
// from it and read into it.
func newPageBuffer(size, offset int) pageBuffer {
	skip := (pageSize - offset%pageSize) % pageSize
	m, err := unix.Mmap(-1, 0, roundUp(skip+size, pageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		// Memory this short fails the heap too, later; until then
		// serve from it.
		return pageBuffer{data: alignedAfter(size, offset)}
	}
	return pageBuffer{mapping: m, data: m[skip : skip+size]}
}

// alignedAfter returns a size-byte heap buffer whose byte at offset is
// on a page boundary.
func alignedAfter(size, offset int) []byte {
	buf := make([]byte, size+pageSize)
	addr := int(uintptr(unsafe.Pointer(&buf[0])))
	skip := ((pageSize-(addr+offset)%pageSize)%pageSize + pageSize) % pageSize
	return buf[skip : skip+size]
}

// release gives the buffer's pages back to the system; it reads as
// zeros afterwards. Nothing may be using the buffer, the kernel
// included: a page written during the madvise would be lost.
func (b pageBuffer) release() {
	if b.mapping != nil {
		unix.Madvise(b.mapping, unix.MADV_DONTNEED)
	}
}

// free unmaps the buffer; it must not be used again.
func (b *pageBuffer) free() {
	if b.mapping != nil {
		unix.Munmap(b.mapping)
	}
	b.mapping, b.data = nil, nil
}
