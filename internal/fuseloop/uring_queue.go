package fuseloop

// FUSE-over-io_uring (Documentation/filesystems/fuse-io-uring.rst): the
// kernel keeps one queue per possible CPU and puts each request on the queue
// of the CPU its caller runs on, once every queue has an entry registered.
// Here each queue has its own ring, served by a thread pinned to that CPU,
// so a request is answered without waking the other CPU. An answer goes back
// as COMMIT_AND_FETCH, submitted in the same io_uring_enter that waits for
// the next request.
//
// What still comes through read() on /dev/fuse: everything before all
// queues are registered, and always FORGET, BATCH_FORGET and INTERRUPT. The
// /dev/fuse loop keeps running beside the rings.
//
// Threads. A queue starts with one thread. A request that blocks (a lock
// wait, a slow layer) would leave its CPU's queue deaf, so the stall watch
// wakes a parked thread of that queue, or starts one, once nobody has been
// waiting on the ring for stallAfter. Queue threads park and never exit
// while the connection lives: the kernel cancels the uring_cmds a task
// submitted when that task exits, which leaves the queue without entries and
// its callers waiting for good. Go ends a thread only when its goroutine
// returns still locked to it, so a queue thread unlocks before returning,
// and returns only once the queue is finished.
//
// A queue is finished when every entry's command has come back with an
// error (the connection ended: ENOTCONN, ECONNABORTED, ECANCELED) or when
// Close woke it through its eventfd.
//
// Locks: each queue has one mutex, mu, which also guards its ring's SQ and
// CQ. No code holds two queues' mu at once; the stall watch takes them in
// turn.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The FUSE uring ABI (include/uapi/linux/fuse.h).
const (
	fuseURingCmdRegister       = 1
	fuseURingCmdCommitAndFetch = 2

	fuseInHeaderSize  = 40
	fuseOutHeaderSize = 16
	fuseOpIoctl       = 39

	// struct fuse_uring_req_header: in_out[128], op_in[128], then
	// struct fuse_uring_ent_in_out {flags, commit_id, payload_sz, padding,
	// reserved}.
	uringHeaderOpIn        = 128
	uringOpInSize          = 128
	uringHeaderCommitID    = 264
	uringHeaderPayloadSize = 272
	uringHeaderSize        = 288

	// The smallest payload buffer the kernel accepts (FUSE_MIN_READ_BUFFER)
	// and the request size it uses without FUSE_MAX_PAGES (32 pages).
	fuseMinReadBuffer  = 8192
	fuseDefaultMaxPage = 32
)

// fuseURingCmdReq is struct fuse_uring_cmd_req, in the SQE's command area.
type fuseURingCmdReq struct {
	flags    uint64
	commitID uint64
	qid      uint16
	_        [6]byte
}

var _ [24]byte = [unsafe.Sizeof(fuseURingCmdReq{})]byte{}

// userDataWake marks the CQE of the poll on a queue's eventfd; every other
// CQE carries its entry's index.
const userDataWake = ^uint64(0)

// RequestHandler answers one FUSE request. in holds the request in
// /dev/fuse's byte format (fuse_in_header, the op's struct, the rest), out
// receives the reply in the same format (fuse_out_header first); it returns
// the number of bytes written to out. It is called from every queue thread
// at once. fuse.ProtocolServer.HandleRequest fits.
type RequestHandler func(in, out [][]byte) int

// URingConfig says how to serve a FUSE connection through io_uring.
type URingConfig struct {
	// DevFD is the connection's /dev/fuse fd. INIT must have been answered
	// with FUSE_OVER_IO_URING before StartURing: the kernel refuses to
	// register entries on a connection that is not initialised.
	DevFD int
	// MaxWrite is the max_write INIT answered; each entry's payload buffer
	// holds the largest request or reply that allows.
	MaxWrite int
	// QueueDepth is the number of entries per CPU queue (2 when zero).
	QueueDepth int
	// StallAfter is how long a queue may have nobody waiting on its ring
	// before another thread is woken for it (2ms when zero).
	StallAfter time.Duration
	Handle     RequestHandler
	Logf       func(format string, args ...any)
}

// URingTransport serves a FUSE connection's requests through one io_uring
// per possible CPU.
type URingTransport struct {
	cfg     URingConfig
	queues  []*uringQueue
	watch   *stallWatch
	threads sync.WaitGroup
	// serving counts the queues that may still run a request; done is
	// closed when it reaches zero (see Done).
	serving atomic.Int32
	done    chan struct{}
}

// URingQueueStats is what a queue has done so far.
type URingQueueStats struct {
	CPU     int
	Served  uint64 // requests answered through the ring
	Threads int    // threads serving it, parked ones included
	Live    int    // entries still registered with the kernel
}

// StartURing registers every CPU's queue with the connection and serves
// them until the connection ends. On error, queues that did register keep
// serving until the connection ends (the kernel then sends every request
// through /dev/fuse, since not all queues are there); nothing needs closing.
func StartURing(cfg URingConfig) (*URingTransport, error) {
	if cfg.Handle == nil {
		return nil, errors.New("io_uring transport: no request handler")
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 2
	}
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = 2 * time.Millisecond
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	ncpu, err := possibleCPUs()
	if err != nil {
		return nil, err
	}
	page := os.Getpagesize()
	payload := roundUp(max(cfg.MaxWrite, fuseDefaultMaxPage*page, fuseMinReadBuffer), page) + page

	t := &URingTransport{cfg: cfg, done: make(chan struct{})}
	t.serving.Store(int32(ncpu))
	for cpu := range ncpu {
		q := &uringQueue{t: t, qid: cpu, payloadSize: payload, wakeFD: -1}
		q.cond = sync.NewCond(&q.mu)
		t.queues = append(t.queues, q)
	}
	t.watch = newStallWatch(t.queues, cfg.StallAfter)
	go t.watch.run()
	started := make(chan error, ncpu)
	for _, q := range t.queues {
		t.threads.Add(1)
		go q.firstThread(started)
	}
	var errs []error
	for range ncpu {
		if err := <-started; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return t, fmt.Errorf("io_uring transport: %w", errors.Join(errs...))
	}
	return t, nil
}

// Close wakes every queue and waits for their threads to leave. Call it once
// the connection has ended (the /dev/fuse reader saw ENODEV, or the mount is
// gone): a queue whose entries are still registered with a live connection
// stops serving but leaves its ring open rather than cancel them, and the
// requests that reach it wait until the connection is aborted.
func (t *URingTransport) Close() error {
	// With the connection over, every entry's command comes back with
	// ENOTCONN soon, and the queues' threads end by themselves; the
	// /dev/fuse reader may just have seen ENODEV first. Give them that
	// moment before cutting them short. Waited for, not polled: the
	// daemon lets go of its layers only after (Options.Ended), and a
	// script may unmount their filesystem right after the union.
	left := make(chan struct{})
	go func() {
		t.threads.Wait()
		close(left)
	}()
	grace := time.NewTimer(closeGrace)
	defer grace.Stop()
	select {
	case <-left:
	case <-grace.C:
		for _, q := range t.queues {
			q.wake()
		}
		<-left
	}
	t.watch.close()
	var errs []error
	for _, q := range t.queues {
		if q.leftOpen {
			errs = append(errs, fmt.Errorf("queue %d: %d entries still registered; ring left open", q.qid, q.live))
		}
	}
	return errors.Join(errs...)
}

// closeGrace is how long Close waits for the kernel to hand back the
// entries of a connection that has ended.
const closeGrace = 5 * time.Second

// Stats reports each queue's counters.
func (t *URingTransport) Stats() []URingQueueStats {
	var s []URingQueueStats
	for _, q := range t.queues {
		q.mu.Lock()
		s = append(s, URingQueueStats{CPU: q.qid, Served: q.served.Load(), Threads: q.threads, Live: q.live})
		q.mu.Unlock()
	}
	return s
}

// String describes each queue's state, for status output and for tests
// that time out.
func (t *URingTransport) String() string {
	var b strings.Builder
	for _, q := range t.queues {
		q.mu.Lock()
		unsubmitted := -1
		if q.ring != nil {
			unsubmitted = int(q.ring.unsubmitted())
		}
		fmt.Fprintf(&b, "queue %d: served %d threads %d parked %d handling %d waiting %v ready %d live %d unsubmitted %d stopping %v\n",
			q.qid, q.served.Load(), q.threads, q.parked, q.handling, q.waiting, len(q.ready), q.live, unsubmitted, q.stopping)
		q.mu.Unlock()
	}
	return b.String()
}

// ringEntry is one registered request slot: a header buffer and a payload
// buffer the kernel writes requests into and reads answers from.
type ringEntry struct {
	index    int
	header   []byte // struct fuse_uring_req_header
	payload  []byte
	iov      [2]unix.Iovec // header, payload: read by the kernel at REGISTER
	in       [3][]byte     // the request as the handler sees it
	out      [2][]byte     // where the handler writes the reply
	lastCmd  uint32
	commitID uint64
}

type uringQueue struct {
	t           *URingTransport
	qid         int // also the CPU its threads are pinned to
	payloadSize int
	ring        *uring
	wakeFD      int
	bufs        []byte // every entry's header and payload, one mapping
	entries     []*ringEntry

	mu   sync.Mutex
	cond *sync.Cond // parked threads wait here; L is mu

	waiting   bool         // a thread is in enter waiting for CQEs; guarded by mu
	ready     []*ringEntry // requests reaped, not yet taken; guarded by mu
	live      int          // entries registered with the kernel; guarded by mu
	stopping  bool         // Close woke the queue; guarded by mu
	threads   int          // guarded by mu
	parked    int          // threads in cond.Wait; guarded by mu
	handling  int          // threads in the handler; guarded by mu
	deafSince time.Time    // since when nobody waits while handlers run; guarded by mu
	helping   bool         // the stall watch woke or started a thread that has not yet waited; guarded by mu
	leftOpen  bool         // set by the last thread out; read after threads.Wait
	done      bool         // the queue runs no request any more; guarded by mu

	served atomic.Uint64
}

// firstThread sets the queue up on its CPU (so that the buffers are local
// and the REGISTER commands belong to the pinned thread), reports, then
// serves.
func (q *uringQueue) firstThread(started chan<- error) {
	defer q.t.threads.Done()
	runtime.LockOSThread()
	unpin := q.pin()
	err := q.setup()
	started <- err
	q.serve()
	q.leave(unpin)
}

// extraThread serves the queue beside the others, started by the stall
// watch. Preconditions: q.threads already counts it.
func (q *uringQueue) extraThread() {
	defer q.t.threads.Done()
	runtime.LockOSThread()
	unpin := q.pin()
	q.serve()
	q.leave(unpin)
}

// pin binds the calling thread to the queue's CPU and returns how to undo
// it. A CPU this process may not run on (a cpuset, taskset) leaves the
// thread unpinned: its queue still has to be registered, and serves the
// other processes' requests from a distance.
func (q *uringQueue) pin() (unpin func()) {
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		q.t.cfg.Logf("io_uring queue %d: sched_getaffinity: %v", q.qid, err)
		return func() {}
	}
	set.Set(q.qid)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		q.t.cfg.Logf("io_uring queue %d: not pinned to its CPU: %v", q.qid, err)
		return func() {}
	}
	return func() { _ = unix.SchedSetaffinity(0, &old) }
}

// leave ends a thread's service: the last one out closes the ring if the
// kernel holds none of its entries any more. The thread goes back to Go's
// pool unpinned rather than exiting.
func (q *uringQueue) leave(unpin func()) {
	q.mu.Lock()
	q.threads--
	last := q.threads == 0
	if last {
		if q.live == 0 {
			q.closeLocked()
		} else {
			q.leftOpen = true
			q.t.cfg.Logf("io_uring queue %d: stopped with %d entries registered; ring left open", q.qid, q.live)
		}
	}
	q.mu.Unlock()
	unpin()
	runtime.UnlockOSThread()
}

func (q *uringQueue) closeLocked() {
	if q.ring != nil {
		q.ring.close()
		q.ring = nil
	}
	if q.wakeFD >= 0 {
		_ = unix.Close(q.wakeFD)
		q.wakeFD = -1
	}
	if q.bufs != nil {
		_ = unix.Munmap(q.bufs)
		q.bufs = nil
	}
}

// setup makes the ring, the buffers and the eventfd, and registers every
// entry. Errors the kernel gives at once (io_uring off for FUSE, a
// connection not initialised) come back here; entries it accepted stay
// live and are served until the connection ends.
func (q *uringQueue) setup() error {
	depth := q.t.cfg.QueueDepth
	q.mu.Lock()
	defer q.mu.Unlock()
	q.threads = 1

	var err error
	q.ring, err = newURing(uint32(depth + 1)) // one more for the eventfd poll
	if err != nil {
		return fmt.Errorf("queue %d: %w", q.qid, err)
	}
	q.wakeFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("queue %d: eventfd: %w", q.qid, err)
	}
	page := os.Getpagesize()
	headers := roundUp(depth*uringHeaderSize, page)
	q.bufs, err = unix.Mmap(-1, 0, headers+depth*q.payloadSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("queue %d: buffers: %w", q.qid, err)
	}
	for i := range depth {
		e := &ringEntry{
			index:   i,
			header:  q.bufs[i*uringHeaderSize : (i+1)*uringHeaderSize : (i+1)*uringHeaderSize],
			payload: q.bufs[headers+i*q.payloadSize : headers+(i+1)*q.payloadSize : headers+(i+1)*q.payloadSize],
		}
		e.iov[0].Base = &e.header[0]
		e.iov[0].SetLen(len(e.header))
		e.iov[1].Base = &e.payload[0]
		e.iov[1].SetLen(len(e.payload))
		q.entries = append(q.entries, e)
	}

	if !q.ring.prepare(q.fillWakePoll) {
		return fmt.Errorf("queue %d: no SQE for the eventfd poll", q.qid)
	}
	for _, e := range q.entries {
		e.lastCmd = fuseURingCmdRegister
		if !q.ring.prepare(func(s *ioSQE) { q.fillCmd(s, e) }) {
			return fmt.Errorf("queue %d: no SQE to register entry %d", q.qid, e.index)
		}
		q.live++
	}
	if _, err := q.ring.enter(q.ring.unsubmitted(), 0, 0); err != nil {
		q.live = 0
		return fmt.Errorf("queue %d: submitting REGISTER: %w", q.qid, err)
	}
	var errs []error
	q.ring.reap(func(c ioCQE) {
		if c.userData == userDataWake {
			q.stopping = true
			return
		}
		if c.res < 0 {
			q.live--
			errs = append(errs, fmt.Errorf("queue %d: REGISTER entry %d: %w", q.qid, c.userData, unix.Errno(-c.res)))
			return
		}
		// A request before setup returns: keep it for serve.
		q.ready = append(q.ready, q.entries[c.userData])
	})
	return errors.Join(errs...)
}

func (q *uringQueue) fillWakePoll(s *ioSQE) {
	s.opcode = ioringOpPollAdd
	s.fd = int32(q.wakeFD)
	s.opFlags = unix.POLLIN
	s.userData = userDataWake
}

// fillCmd prepares e's REGISTER or COMMIT_AND_FETCH, as e.lastCmd says.
func (q *uringQueue) fillCmd(s *ioSQE, e *ringEntry) {
	s.opcode = ioringOpUringCmd
	s.fd = int32(q.t.cfg.DevFD)
	s.cmdOp = e.lastCmd
	s.userData = uint64(e.index)
	req := (*fuseURingCmdReq)(unsafe.Pointer(&s.cmd[0]))
	req.qid = uint16(q.qid)
	if e.lastCmd == fuseURingCmdRegister {
		s.addr = uint64(uintptr(unsafe.Pointer(&e.iov[0])))
		s.len = uint32(len(e.iov))
		return
	}
	req.commitID = e.commitID
}

// wake makes the queue's waiter return and the queue stop.
func (q *uringQueue) wake() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopping = true
	q.cond.Broadcast()
	if q.wakeFD >= 0 {
		_, _ = unix.Write(q.wakeFD, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
}

func (q *uringQueue) finishedLocked() bool { return q.stopping || q.live == 0 || q.ring == nil }

// serve is a queue thread's loop: answer what was reaped, else wait on the
// ring (submitting the answers in the same enter), else park while another
// thread waits.
func (q *uringQueue) serve() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.finishedLocked() {
		if len(q.ready) > 0 {
			e := q.ready[0]
			q.ready = q.ready[1:]
			q.handling++
			q.helping = false // a woken helper that handles is no longer listening
			q.mu.Unlock()
			q.t.watch.busy()
			q.answer(e)
			q.mu.Lock()
			q.handling--
			e.lastCmd = fuseURingCmdCommitAndFetch
			if !q.ring.prepare(func(s *ioSQE) { q.fillCmd(s, e) }) {
				// Each entry has at most one command out, and the SQ
				// has a slot per entry: this cannot happen.
				q.t.cfg.Logf("io_uring queue %d: no SQE to commit entry %d; entry lost", q.qid, e.index)
				q.live--
			}
			continue
		}
		if q.waiting {
			// Another thread listens. Submit our answers ourselves: it
			// may sleep until a request comes, and the callers of these
			// must not wait for that.
			if n := q.ring.unsubmitted(); n > 0 {
				q.mu.Unlock()
				_, err := q.ring.enter(n, 0, 0)
				q.mu.Lock()
				if err != nil && !errors.Is(err, unix.EINTR) {
					q.t.cfg.Logf("io_uring queue %d: submit: %v", q.qid, err)
				}
				continue
			}
			q.parked++
			q.cond.Wait()
			q.parked--
			continue
		}
		q.waiting = true
		q.helping = false
		q.deafSince = time.Time{}
		n := q.ring.unsubmitted()
		q.mu.Unlock()
		_, err := q.ring.enter(n, 1, ioringEnterGetEvents)
		q.mu.Lock()
		q.waiting = false
		if err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EBUSY) {
			q.t.cfg.Logf("io_uring queue %d: enter: %v", q.qid, err)
		}
		q.reapLocked()
		if len(q.ready) > 0 {
			q.deafSince = time.Now()
		}
	}
	if q.handling == 0 && !q.done {
		// Finished, and the last handler is back: what is left in
		// ready is never answered.
		q.done = true
		if q.t.serving.Add(-1) == 0 {
			close(q.t.done)
		}
	}
	q.cond.Broadcast() // the other threads see finished too
}

// Done is closed once no queue will run a request any more: the
// connection has ended (or the queues were woken by Close) and every
// handler has returned. The threads may still be leaving.
func (t *URingTransport) Done() <-chan struct{} { return t.done }

// reapLocked sorts the CQEs: requests to answer, the eventfd's wake-up,
// entries retried, entries gone. Preconditions: q.mu held.
func (q *uringQueue) reapLocked() {
	q.ring.reap(func(c ioCQE) {
		if c.userData == userDataWake {
			q.stopping = true
			return
		}
		e := q.entries[c.userData]
		if c.res >= 0 {
			q.ready = append(q.ready, e)
			return
		}
		switch errno := unix.Errno(-c.res); errno {
		case unix.EINTR, unix.EAGAIN:
			if q.ring.prepare(func(s *ioSQE) { q.fillCmd(s, e) }) {
				return
			}
			q.live--
		case unix.ENOTCONN, unix.ECONNABORTED, unix.ECANCELED, unix.ENODEV:
			q.live-- // the connection ended
		default:
			q.live--
			q.t.cfg.Logf("io_uring queue %d: entry %d command %d: %v; entry lost", q.qid, e.index, e.lastCmd, errno)
		}
	})
}

// answer rebuilds e's request as /dev/fuse's byte stream without copying,
// lets the handler answer into e's own buffers, and records the payload
// size for the commit.
func (q *uringQueue) answer(e *ringEntry) {
	h := e.header
	le := binary.LittleEndian
	e.commitID = le.Uint64(h[uringHeaderCommitID:])
	payloadLen := int(le.Uint32(h[uringHeaderPayloadSize:]))
	reqLen := int(le.Uint32(h[0:4]))
	opcode := le.Uint32(h[4:8])
	unique := le.Uint64(h[8:16])

	// The kernel puts the op's struct (its first argument) in op_in and
	// the rest in the payload; the header's len still counts them all, so
	// the struct's size is what is left.
	opLen := reqLen - fuseInHeaderSize - payloadLen
	if opLen < 0 || opLen > uringOpInSize || payloadLen > len(e.payload) {
		q.t.cfg.Logf("io_uring queue %d: malformed request op %d len %d payload %d", q.qid, opcode, reqLen, payloadLen)
		q.replyError(e, unique, unix.EIO)
		return
	}
	payload := e.payload[:payloadLen]
	if opcode == fuseOpIoctl && payloadLen > 0 {
		// Its input and output share the payload buffer; the handler
		// writes the output while it may still read the input.
		payload = append([]byte(nil), payload...)
	}
	e.in = [3][]byte{h[:fuseInHeaderSize], h[uringHeaderOpIn : uringHeaderOpIn+opLen], payload}
	// The reply overwrites the request in place: the handler has read the
	// header and the op struct before it writes, and a name or data it
	// reads from the payload is copied before any output lands there.
	e.out = [2][]byte{h[:fuseOutHeaderSize], e.payload}
	n := q.t.cfg.Handle(e.in[:], e.out[:])
	if n < fuseOutHeaderSize {
		// No reply (the handler drops FORGET-like requests): the entry
		// still has to be committed to fetch the next one.
		q.replyError(e, unique, unix.EIO)
		return
	}
	le.PutUint32(h[uringHeaderPayloadSize:], uint32(n-fuseOutHeaderSize))
	q.served.Add(1)
}

func (q *uringQueue) replyError(e *ringEntry, unique uint64, errno unix.Errno) {
	le := binary.LittleEndian
	h := e.header
	le.PutUint32(h[0:4], fuseOutHeaderSize)
	le.PutUint32(h[4:8], uint32(-int32(errno)))
	le.PutUint64(h[8:16], unique)
	le.PutUint32(h[uringHeaderPayloadSize:], 0)
}

// possibleCPUs is the kernel's num_possible_cpus(): the number of queues a
// connection has, every one of which must be registered.
func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, fmt.Errorf("possible CPUs: %w", err)
	}
	return parseCPUList(strings.TrimSpace(string(b)))
}

// parseCPUList counts the CPUs of a list such as "0-3,5".
func parseCPUList(s string) (int, error) {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("CPU list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("CPU list %q: bad range %q", s, part)
			}
		}
		n += b - a + 1
	}
	return n, nil
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }
