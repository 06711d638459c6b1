// Package thinblock is a thin-provisioned block pool modelled on the
// kernel's dm-thin: a data device and a metadata device holding thin
// volumes that get data blocks on first write, O(1) copy-on-write
// snapshots of any volume to any depth, discard, and crash-safe metadata.
//
// Under it: blockdev (I/O, checksums, fault injection), txn (shadowing,
// two superblocks, commit), btree (the copy-on-write B-tree) and spacemap
// (data block reference counts). Mapping trees are shared between a
// volume and its snapshots node by node; the first write to a shared data
// block copies it.
//
// Locks, as a tree: a lock is taken only while holding its ancestors or
// nothing, never while holding a sibling or a descendant.
//
//	Pool.mu                 all metadata: trees, space map, cells, frozen
//	  Pool.ioGate           shared by data I/O, exclusive by a commit
//	  inflight.mu (Pool.io) counts of data I/O running outside Pool.mu
//
// Pool.mu also gates deletes against opens: Hold (an NBD client
// choosing an export, an open of a volume's file) checks that the volume
// exists and records the claim, and DeleteVolumes checks the claims and
// deletes, each under one hold of Pool.mu. So an open racing a delete
// either holds the volume and the delete is refused (EBUSY), or finds it
// gone; callers take no lock of their own around either (holds.go).
//
// Pool.mu serializes all metadata work; data I/O runs after it is
// released, holding ioGate shared. A commit holds ioGate exclusively, so
// the data of every mapped block is written before the commit syncs. A
// request that needs Pool.mu again after its I/O (to map a filled block)
// drops ioGate first. Functions named ...Locked, or with a
// "Preconditions:" line, expect Pool.mu held. A pool commits on Commit (a
// client's flush) and every CommitInterval while dirty.
//
// The copy-on-write rule: no mapping is visible to another request
// before the data block it points to holds complete and final content.
//   - A new data block that must be filled (a copy of a shared block, a
//     block written whole, or zeros written around a first write where
//     holes cannot be punched) is reserved in the space map, filled
//     outside Pool.mu, and mapped only then. Meanwhile the cell of its
//     (volume, virtual block) is held, and every read, write, discard or
//     write-zeroes touching that virtual block waits for the cell
//     (prison.go; dm-thin's bio prison). A fresh block that can be zeroed
//     by punching a hole is zeroed under Pool.mu and mapped at once: zeros
//     are its final content until the write lands.
//   - Reads and overwrites of blocks only their volume maps take no cell:
//     the fast path costs a map look-up and two leaf-lock round trips.
//   - A reference to a data block dropped while I/O to it is in flight
//     (a read through the volume that is copying away from it, a write
//     racing a discard or a delete) is dropped only at the next commit,
//     which waits for all I/O (decDataLocked). Until then the block
//     counts as shared, so no other volume overwrites it in place, and
//     it cannot be freed and handed out again under that I/O.
//   - A reserved block is not recorded as used by a commit, so a crash
//     while it is filled leaks nothing.
//   - Snapshot and DeleteVolume fall between writes: they wait for the
//     writes in flight on the volume, and new writes to it wait for them,
//     so a snapshot never shares a block a write is still landing in.
package thinblock

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/btree"
	"github.com/unionmount/unionmount/thinblock/spacemap"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// Block sizes dm-thin allows: powers of two from 64 KiB to 1 GiB.
const (
	MinBlockSize     = 64 << 10
	MaxBlockSize     = 1 << 30
	DefaultBlockSize = 64 << 10
)

// Pool-level crash points, around the data sync that precedes a commit
// (the metadata commit's own are txn.CrashPoints).
const (
	CrashBeforeDataSync = "commit-before-data-sync"
	CrashAfterDataSync  = "commit-after-data-sync"
)

// CrashPoints lists every named crash point of a commit, in order.
func CrashPoints() []string {
	return append([]string{CrashBeforeDataSync, CrashAfterDataSync}, txn.CrashPoints()...)
}

var (
	// ErrNoVolume is returned for a volume id that does not exist.
	ErrNoVolume = errors.New("no such volume")
	// ErrVolumeExists is returned when creating an id that is taken.
	ErrVolumeExists = errors.New("volume id already in use")
	// ErrOutOfRange is returned for I/O past a volume's end.
	ErrOutOfRange = fmt.Errorf("beyond the end of the volume: %w", syscall.EINVAL)
	// ErrNoSpace is returned for a write that needs a data block when
	// none is free.
	ErrNoSpace = spacemap.ErrNoSpace
	// ErrBadBlockSize is returned for a block size dm-thin would refuse.
	ErrBadBlockSize = fmt.Errorf("block size must be a power of two from 64 KiB to 1 GiB: %w", syscall.EINVAL)
)

// Options tune an open pool.
type Options struct {
	// CacheBlocks bounds the metadata cache (4 KiB blocks); default 4096.
	CacheBlocks int
	// CommitInterval is how often a dirty pool commits by itself:
	// 0 means every second (dm-thin's default), a negative value only
	// on Commit.
	CommitInterval time.Duration
	// Crash is the fault-injection seam: called at each named crash
	// point, an error it returns stops the commit there.
	Crash func(point string) error
	// AcceptRollback opens a pool whose newest superblock is damaged
	// although its transaction was (or may have been) committed, at the
	// older transaction; without it Open refuses with txn.ErrRollback.
	AcceptRollback bool
	// Logf gets a line for a problem that fails no request (giving
	// space back); nil discards.
	Logf func(format string, args ...any)
	// NoSpaceWait is the out-of-space policy of Volume.Write and
	// ZeroRange (nospace.go): 0 fails a write that needs a block when
	// none is free at once, a positive value waits that long for space
	// first, a negative one waits for good.
	NoSpaceWait time.Duration
}

// checkRecovery refuses a pool that would silently lose a committed
// transaction.
func checkRecovery(tm *txn.Manager, opts Options) error {
	if r := tm.Recovery(); r.Lost && !opts.AcceptRollback {
		return fmt.Errorf("%w: %s", txn.ErrRollback, r)
	}
	return nil
}

// CreateOptions describe a new pool.
type CreateOptions struct {
	BlockSize uint64 // bytes; default DefaultBlockSize
	DataSize  uint64 // bytes; default: the data device's size
	// LowWater is the number of free data blocks below which the pool
	// reports itself low on space; default 10% of the pool.
	LowWater uint64
}

// Pool is an open thin pool.
type Pool struct {
	mu      sync.Mutex
	ioGate  sync.RWMutex
	metaDev blockdev.Device
	dataDev blockdev.Device
	tm      *txn.Manager
	data    *spacemap.Map
	devices *btree.Tree // id -> deviceDetails
	maps    *btree.Tree // virtual block -> packed mapping
	attrs   *btree.Tree // id -> volumeAttrs (attrs.go)
	sb      txn.Superblock
	opts    Options
	dirty   bool
	// failed is set when a commit failed half-way: the in-memory state
	// can no longer be trusted, so every later call fails until reopen.
	failed error
	// noPunch is set once the data device refused to punch holes, so
	// fresh blocks are zeroed by writing.
	noPunch bool
	// givenBack counts the data blocks punched out of the data device.
	givenBack uint64
	// spaceCh is closed when space may have been given to the pool
	// (nospace.go); guarded by mu.
	spaceCh chan struct{}
	// noCopyRange is set once the data device refused copy_file_range;
	// copy-on-write then copies through memory. Read outside mu.
	noCopyRange atomic.Bool
	// cells holds a channel, closed when the cell is freed, for each
	// virtual block whose new data block is being filled (prison.go).
	// Guarded by mu.
	cells map[cellKey]chan struct{}
	// frozen holds, for each volume a Snapshot waits to take, a channel
	// closed when it has: writes to the volume wait for it. Guarded by mu.
	frozen map[uint64]chan struct{}
	// io counts the data I/O running outside mu (prison.go).
	io inflight
	// deferred are references to data blocks dropped while I/O to them
	// was in flight; the commit, which waits for all I/O, drops them.
	// Guarded by mu.
	deferred []uint64
	// holds are the claims on each volume by its users (holds.go);
	// DeleteVolumes refuses a held volume. Guarded by mu.
	holds map[uint64]map[*Hold]string
	stop  chan struct{}
	done  chan struct{}
}

func checkBlockSize(bs uint64) error {
	if bs < MinBlockSize || bs > MaxBlockSize || bs&(bs-1) != 0 {
		return fmt.Errorf("%d: %w", bs, ErrBadBlockSize)
	}
	return nil
}

// Create formats a new pool on meta and data and opens it.
func Create(meta, data blockdev.Device, co CreateOptions, opts Options) (*Pool, error) {
	if co.BlockSize == 0 {
		co.BlockSize = DefaultBlockSize
	}
	if err := checkBlockSize(co.BlockSize); err != nil {
		return nil, err
	}
	size, err := data.Size()
	if err != nil {
		return nil, fmt.Errorf("data device: %w", err)
	}
	if co.DataSize == 0 {
		co.DataSize = uint64(size)
	}
	blocks := co.DataSize / co.BlockSize
	if blocks == 0 {
		return nil, fmt.Errorf("data size %d is smaller than one block (%d): %w", co.DataSize, co.BlockSize, syscall.EINVAL)
	}
	if blocks > MaxDataBlocks {
		return nil, fmt.Errorf("data size needs %d blocks, the most is %d: %w", blocks, uint64(MaxDataBlocks), syscall.EINVAL)
	}
	if uint64(size) < blocks*co.BlockSize {
		if err := data.Truncate(int64(blocks * co.BlockSize)); err != nil {
			return nil, fmt.Errorf("grow data device: %w", err)
		}
	}
	if co.LowWater == 0 {
		co.LowWater = blocks / 10
	}
	sb := txn.Superblock{DataBlockSize: co.BlockSize, DataBlocks: blocks, LowWater: co.LowWater}
	if err := txn.Format(meta, sb); err != nil {
		return nil, fmt.Errorf("format metadata: %w", err)
	}
	// The first transaction creates the empty trees and commits them.
	tm, err := txn.Open(meta, cacheBlocks(opts))
	if err != nil {
		return nil, err
	}
	p := newPool(meta, data, tm, opts)
	if p.sb.DevicesRoot, err = p.devices.Empty(); err != nil {
		return nil, err
	}
	if p.data, err = spacemap.Create(tm, blocks); err != nil {
		return nil, err
	}
	p.dirty = true
	if err := p.Commit(); err != nil {
		return nil, err
	}
	p.startCommitter()
	return p, nil
}

func cacheBlocks(o Options) int {
	if o.CacheBlocks == 0 {
		return 4096
	}
	return o.CacheBlocks
}

func newPool(meta, data blockdev.Device, tm *txn.Manager, opts Options) *Pool {
	p := &Pool{metaDev: meta, dataDev: data, tm: tm, sb: tm.Superblock(), opts: opts,
		cells: map[cellKey]chan struct{}{}, frozen: map[uint64]chan struct{}{},
		holds: map[uint64]map[*Hold]string{}}
	p.io.init()
	tm.Crash = opts.Crash
	p.devices = btree.New(tm, detailsSize, nil)
	p.maps = btree.New(tm, 8, mappingRefs{p})
	p.attrs = btree.New(tm, attrsSize, nil)
	return p
}

// Open opens an existing pool at its last commit.
func Open(meta, data blockdev.Device, opts Options) (*Pool, error) {
	tm, err := txn.Open(meta, cacheBlocks(opts))
	if err != nil {
		return nil, err
	}
	if err := checkRecovery(tm, opts); err != nil {
		return nil, err
	}
	p := newPool(meta, data, tm, opts)
	if err := checkBlockSize(p.sb.DataBlockSize); err != nil {
		return nil, fmt.Errorf("superblock: %w", err)
	}
	size, err := data.Size()
	if err != nil {
		return nil, fmt.Errorf("data device: %w", err)
	}
	if need := p.sb.DataBlocks * p.sb.DataBlockSize; uint64(size) < need {
		return nil, fmt.Errorf("data device holds %d bytes, the pool needs %d", size, need)
	}
	if err := tm.RebuildRefs(p.visitMetadata); err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	if p.sb.Flags&txn.FlagDataFree != 0 {
		p.data, err = spacemap.OpenCounted(tm, p.sb.DataSMRoot, p.sb.DataBlocks, p.sb.DataFree)
	} else {
		p.data, err = spacemap.Open(tm, p.sb.DataSMRoot, p.sb.DataBlocks)
	}
	if err != nil {
		return nil, fmt.Errorf("data space map: %w", err)
	}
	p.startCommitter()
	return p, nil
}

// visitMetadata reports every reference to a metadata block in the
// committed state: the device tree, each volume's mapping tree, the
// attribute tree and the data space map.
func (p *Pool) visitMetadata(visit func(b uint64) (bool, error)) error {
	err := p.devices.VisitNodes(p.sb.DevicesRoot, visit, func(id uint64, v []byte) error {
		d, err := decodeDetails(v)
		if err != nil {
			return fmt.Errorf("volume %d: %w", id, err)
		}
		return p.maps.VisitNodes(d.MappingRoot, visit, nil)
	})
	if err != nil {
		return err
	}
	if err := p.visitAttrs(visit); err != nil {
		return fmt.Errorf("volume attributes: %w", err)
	}
	return spacemap.VisitNodes(p.tm, p.sb.DataSMRoot, visit)
}

func (p *Pool) startCommitter() {
	interval := p.opts.CommitInterval
	if interval < 0 {
		return
	}
	if interval == 0 {
		interval = time.Second
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
				// Like dm-thin's periodic commit, this one is for the
				// metadata: data durability is a flush's job.
				p.mu.Lock()
				dirty := p.dirty
				p.mu.Unlock()
				if dirty {
					p.Commit()
				}
			}
		}
	}()
}

// Commit makes every completed write durable: the data device is synced,
// then the metadata transaction commits.
func (p *Pool) Commit() error {
	p.syncBeforeCommit()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.commitLocked()
}

// Rounds of the data sync before a commit takes its locks: another
// round follows while the last one took longer than quietDataSync.
const (
	maxSyncRounds = 4
	quietDataSync = 10 * time.Millisecond
)

// syncBeforeCommit flushes dirty data before the commit takes its locks,
// so that the sync inside it, which stops all I/O while it runs, has
// little left. Writers go on during these syncs: one that took long left
// about as long a stop behind it (with 5k copy-on-writes a second, 30-90
// ms), so it is followed by another, until one finds little to write.
func (p *Pool) syncBeforeCommit() {
	for round := 0; round < maxSyncRounds; round++ {
		start := time.Now()
		if p.dataDev.Sync() != nil || time.Since(start) < quietDataSync {
			return // an error is the commit's to report, under its locks
		}
	}
}

func (p *Pool) commitLocked() error {
	if p.failed != nil {
		return p.failed
	}
	p.ioGate.Lock()
	defer p.ioGate.Unlock()
	if err := p.crash(CrashBeforeDataSync); err != nil {
		return p.fail(err)
	}
	if err := p.dataDev.Sync(); err != nil {
		return p.fail(fmt.Errorf("sync data: %w", err))
	}
	if err := p.crash(CrashAfterDataSync); err != nil {
		return p.fail(err)
	}
	// No I/O runs now: the references dropped while it did can go.
	for _, b := range p.deferred {
		if err := p.data.Dec(b); err != nil {
			return p.fail(err)
		}
		p.dirty = true
	}
	p.deferred = nil
	if !p.dirty {
		return nil
	}
	sb := p.sb
	sb.DataSMRoot = p.data.Root()
	sb.DataBlocks = p.data.Blocks()
	// Blocks freed in this transaction are free once it commits.
	sb.DataFree, sb.Flags = p.data.Free(), sb.Flags|txn.FlagDataFree
	if err := p.tm.Commit(sb); err != nil {
		return p.fail(err)
	}
	p.sb = p.tm.Superblock()
	p.data.Committed()
	p.dirty = false
	p.spaceGivenLocked()
	if err := p.giveBackLocked(); err != nil && p.opts.Logf != nil {
		// The commit stands; the space stays allocated on the host.
		p.opts.Logf("give space back: %v", err)
	}
	return nil
}

func (p *Pool) crash(point string) error {
	if p.opts.Crash != nil {
		return p.opts.Crash(point)
	}
	return nil
}

func (p *Pool) fail(err error) error {
	p.failed = fmt.Errorf("pool needs reopening after a failed commit: %w", err)
	return err
}

// Close commits and closes the pool (not the devices): both superblock
// slots then hold the last transaction, flagged as a clean close.
func (p *Pool) Close() error {
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop = nil
	}
	if err := p.Commit(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tm.Settle()
}

// BlockSize is the data block size in bytes.
func (p *Pool) BlockSize() uint64 { return p.sb.DataBlockSize }

// Status describes a pool.
type Status struct {
	TransactionID uint64
	BlockSize     uint64
	DataBlocks    uint64
	FreeBlocks    uint64
	LowWater      uint64
	// LowSpace is set when free blocks are at or below the low-water
	// mark; OutOfSpace when none is left.
	LowSpace, OutOfSpace bool
	MetadataBlocks       uint64
	MetadataUsed         uint64
	Volumes              int
	Failed               string
}

// Status reports the pool's use of space.
func (p *Pool) Status() (Status, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ms := p.tm.Stats()
	s := Status{TransactionID: p.sb.TxnID, BlockSize: p.sb.DataBlockSize, DataBlocks: p.data.Blocks(),
		FreeBlocks: p.data.Free(), LowWater: p.sb.LowWater, MetadataBlocks: ms.Blocks, MetadataUsed: ms.Used}
	s.LowSpace = s.FreeBlocks <= s.LowWater
	s.OutOfSpace = s.FreeBlocks == 0
	if p.failed != nil {
		s.Failed = p.failed.Error()
	}
	err := p.devices.Walk(p.sb.DevicesRoot, 0, ^uint64(0), func(uint64, []byte) (bool, error) {
		s.Volumes++
		return true, nil
	})
	return s, err
}

// Resize changes the number of data bytes (rounded down to whole
// blocks); the data device grows as needed. Shrinking below a block in
// use fails.
func (p *Pool) Resize(dataSize uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failed != nil {
		return p.failed
	}
	blocks := dataSize / p.sb.DataBlockSize
	if blocks == 0 || blocks > MaxDataBlocks {
		return fmt.Errorf("resize to %d bytes: %d blocks is out of range: %w", dataSize, blocks, syscall.EINVAL)
	}
	size, err := p.dataDev.Size()
	if err != nil {
		return err
	}
	if need := int64(blocks * p.sb.DataBlockSize); size < need {
		if err := p.dataDev.Truncate(need); err != nil {
			return fmt.Errorf("grow data device: %w", err)
		}
	}
	old := p.data.Blocks()
	if err := p.data.Resize(blocks); err != nil {
		return err
	}
	// The low-water mark keeps its share of the pool, as a percentage
	// setting would.
	if old > 0 {
		p.sb.LowWater = uint64(float64(p.sb.LowWater) * float64(blocks) / float64(old))
	}
	p.dirty = true
	return p.commitLocked()
}
