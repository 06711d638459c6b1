package thinblock

import (
	"fmt"

	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// Giving space back: data blocks that no volume maps any longer are
// punched out of the data device (fallocate PUNCH_HOLE|KEEP_SIZE on a
// file, a discard on a block device), so a file-backed pool's host
// filesystem gets the space back as dm-thin's discard passdown does.
//
// A block is punched only once the commit that freed it is durable: until
// then the committed metadata may still map it, and a crash would bring
// back a mapping to a hole. The punch runs inside the commit, with
// Pool.mu and ioGate held exclusively, so no I/O is in flight on the
// block and no allocation can hand it out meanwhile.

// giveBackLocked punches the blocks freed by the transaction just
// committed that are still unused.
// Preconditions: p.mu and p.ioGate (exclusively) are held, and the
// commit that freed the blocks is durable.
func (p *Pool) giveBackLocked() error {
	freed := p.data.TakeFreed()
	z, ok := p.dataDev.(blockdev.Zeroer)
	if !ok || p.noPunch || len(freed) == 0 {
		return nil
	}
	var runs [][2]uint64 // start, length
	for _, d := range freed {
		unused, err := p.data.Unused(d)
		if err != nil {
			return err
		}
		if !unused {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1][0]+runs[n-1][1] == d {
			runs[n-1][1]++
			continue
		}
		runs = append(runs, [2]uint64{d, 1})
	}
	for _, r := range runs {
		if err := p.punchLocked(z, r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

// punchLocked punches n data blocks from start. A device that cannot is
// remembered (fresh blocks are then zeroed by writing) and not asked
// again.
func (p *Pool) punchLocked(z blockdev.Zeroer, start, n uint64) error {
	bs := p.sb.DataBlockSize
	if err := z.ZeroRange(int64(start*bs), int64(n*bs)); err != nil {
		p.noPunch = true
		return fmt.Errorf("punch data blocks %d-%d: %w", start, start+n-1, err)
	}
	p.givenBack += n
	return nil
}

// Trim punches every unused data block out of the data device: for a
// pool whose blocks were freed before it gave space back, or on a
// device that was filled behind its back. It returns the blocks
// punched.
func (p *Pool) Trim() (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return 0, err
	}
	z, ok := p.dataDev.(blockdev.Zeroer)
	if !ok {
		return 0, fmt.Errorf("the data device cannot punch holes")
	}
	// Blocks freed since the last commit are committed as free first.
	if err := p.commitLocked(); err != nil {
		return 0, err
	}
	p.ioGate.Lock()
	defer p.ioGate.Unlock()
	before := p.givenBack
	err := p.data.ForEachUnused(func(start, n uint64) error {
		if p.noPunch {
			// A device that refused once is asked again here: trim is
			// asked for by name.
			p.noPunch = false
		}
		return p.punchLocked(z, start, n)
	})
	return p.givenBack - before, err
}
