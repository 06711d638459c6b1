package fuseloop

// A minimal io_uring: setup, the three shared mappings, SQE preparation,
// io_uring_enter and CQE reaping, through golang.org/x/sys/unix syscalls.
// It holds only what the FUSE queue transport needs; liburing is the model
// for the ABI, not for the code.
//
// Concurrency: a uring does no locking of its own. Preparing and publishing
// SQEs must be serialised by the caller; reaping must be serialised by the
// caller; enter may be called from any number of threads at once (the kernel
// serialises submission itself).

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring ABI values (include/uapi/linux/io_uring.h). x/sys/unix has the
// syscall numbers but not these.
const (
	ioringSetupCQSize    = 1 << 3
	ioringSetupSubmitAll = 1 << 7
	ioringSetupSQE128    = 1 << 10

	ioringFeatSingleMmap = 1 << 0

	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringEnterGetEvents = 1 << 0

	ioringOpNop      = 0
	ioringOpPollAdd  = 6
	ioringOpUringCmd = 46
)

// ioSQE is a 128-byte submission queue entry (IORING_SETUP_SQE128). The
// first 64 bytes are the classic SQE; with SQE128 the command area of
// IORING_OP_URING_CMD starts at byte 48 and is 80 bytes long.
type ioSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	cmdOp       uint32 // the low half of the "off" union; URING_CMD's command
	pad1        uint32
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, poll32_events, uring_cmd_flags...
	userData    uint64
	bufIndex    uint16
	personality uint16
	fileIndex   int32
	cmd         [80]byte
}

// ioCQE is a 16-byte completion queue entry (no IORING_SETUP_CQE32).
type ioCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// The kernel's layout, checked at compile time.
var (
	_ [128]byte = [unsafe.Sizeof(ioSQE{})]byte{}
	_ [48]byte  = [unsafe.Offsetof(ioSQE{}.cmd)]byte{}
	_ [16]byte  = [unsafe.Sizeof(ioCQE{})]byte{}
	_ [120]byte = [unsafe.Sizeof(ioUringParams{})]byte{}
)

type ioSQRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type ioCQRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type ioUringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  ioSQRingOffsets
	cqOff                                                                  ioCQRingOffsets
}

// uring is one io_uring instance with 128-byte SQEs.
type uring struct {
	fd int

	ringMem []byte // the SQ ring, and the CQ ring too with IORING_FEAT_SINGLE_MMAP
	cqMem   []byte // nil with IORING_FEAT_SINGLE_MMAP
	sqeMem  []byte

	sqHead    *uint32 // advanced by the kernel as it consumes SQEs
	sqTail    *uint32 // advanced by us as we publish SQEs
	sqMask    uint32
	sqEntries uint32
	sqes      []ioSQE

	cqHead *uint32 // advanced by us as we consume CQEs
	cqTail *uint32 // advanced by the kernel as it posts CQEs
	cqMask uint32
	cqes   []ioCQE
}

// newURing sets up a ring of at least entries SQEs and twice as many CQEs.
func newURing(entries uint32) (*uring, error) {
	p := ioUringParams{
		flags:     ioringSetupSQE128 | ioringSetupSubmitAll | ioringSetupCQSize,
		cqEntries: 2 * entries,
	}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup(%d): %w", entries, errno)
	}
	r := &uring{fd: int(fd)}
	if err := r.mapRings(&p); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *uring) mapRings(p *ioUringParams) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(ioCQE{}))
	single := p.features&ioringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	r.ringMem, err = unix.Mmap(r.fd, ioringOffSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap io_uring SQ ring: %w", err)
	}
	cqMem := r.ringMem
	if !single {
		r.cqMem, err = unix.Mmap(r.fd, ioringOffCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("mmap io_uring CQ ring: %w", err)
		}
		cqMem = r.cqMem
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(ioSQE{}))
	r.sqeMem, err = unix.Mmap(r.fd, ioringOffSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap io_uring SQEs: %w", err)
	}

	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	r.sqHead = u32(r.ringMem, p.sqOff.head)
	r.sqTail = u32(r.ringMem, p.sqOff.tail)
	r.sqMask = *u32(r.ringMem, p.sqOff.ringMask)
	r.sqEntries = *u32(r.ringMem, p.sqOff.ringEntries)
	r.sqes = unsafe.Slice((*ioSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	// SQE slot i always sits at index i of the indirection array, so the
	// array is filled once here and never touched again.
	array := unsafe.Slice(u32(r.ringMem, p.sqOff.array), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}

	r.cqHead = u32(cqMem, p.cqOff.head)
	r.cqTail = u32(cqMem, p.cqOff.tail)
	r.cqMask = *u32(cqMem, p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*ioCQE)(unsafe.Pointer(&cqMem[p.cqOff.cqes])), p.cqEntries)
	return nil
}

// prepare fills the next free SQE with fill and publishes it to the kernel,
// which consumes it at the next enter with toSubmit covering it. It reports
// false when the submission queue is full.
//
// Preconditions: the caller serialises prepare and unsubmitted.
func (r *uring) prepare(fill func(*ioSQE)) bool {
	tail := *r.sqTail // only we write it
	if tail-atomic.LoadUint32(r.sqHead) >= r.sqEntries {
		return false
	}
	sqe := &r.sqes[tail&r.sqMask]
	*sqe = ioSQE{}
	fill(sqe)
	atomic.StoreUint32(r.sqTail, tail+1)
	return true
}

// unsubmitted is the number of SQEs published but not yet consumed by the
// kernel.
//
// Preconditions: the caller serialises prepare and unsubmitted.
func (r *uring) unsubmitted() uint32 {
	return *r.sqTail - atomic.LoadUint32(r.sqHead)
}

// enter submits toSubmit SQEs and, with ioringEnterGetEvents, waits until
// minComplete CQEs are there. It returns the number of SQEs the kernel
// consumed. If that is fewer than toSubmit (another thread submitted some
// of them first) the kernel returns without waiting.
func (r *uring) enter(toSubmit, minComplete, flags uint32) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(minComplete), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// reap hands every posted CQE to fn, in order, and frees their slots. It
// returns how many it handed over.
//
// Preconditions: the caller serialises reap.
func (r *uring) reap(fn func(ioCQE)) int {
	head := *r.cqHead // only we write it
	tail := atomic.LoadUint32(r.cqTail)
	n := 0
	for ; head != tail; head++ {
		fn(r.cqes[head&r.cqMask])
		n++
	}
	atomic.StoreUint32(r.cqHead, head)
	return n
}

// close unmaps the rings and closes the ring's fd. The kernel cancels what
// is still in flight; for FUSE's uring_cmds that strands the queue (see
// uring_queue.go), so a queue closes its ring only once its connection is
// gone.
func (r *uring) close() {
	for _, m := range [][]byte{r.sqeMem, r.cqMem, r.ringMem} {
		if m != nil {
			_ = unix.Munmap(m)
		}
	}
	r.sqeMem, r.cqMem, r.ringMem = nil, nil, nil
	if r.fd >= 0 {
		_ = unix.Close(r.fd)
		r.fd = -1
	}
}
