package thinblock

import (
	"errors"
	"time"
)

// The out-of-space policy, dm-thin's error_if_no_space and
// no_space_timeout: a write that needs a new data block when none is
// free fails at once with ENOSPC (Options.NoSpaceWait zero), or waits
// for space (the pool grown, blocks freed by a delete or discard once
// committed) up to NoSpaceWait, then fails. A write that failed for
// space is retried whole: the blocks it had mapped before failing hold
// the same data again.

// spaceWaitLocked returns a channel closed the next time space may have
// been given to the pool.
// Preconditions: p.mu is held.
func (p *Pool) spaceWaitLocked() <-chan struct{} {
	if p.spaceCh == nil {
		p.spaceCh = make(chan struct{})
	}
	return p.spaceCh
}

// spaceGivenLocked wakes the writers waiting for space.
// Preconditions: p.mu is held.
func (p *Pool) spaceGivenLocked() {
	if p.spaceCh != nil {
		close(p.spaceCh)
		p.spaceCh = nil
	}
}

// waitForSpace waits until space may have been given or the deadline
// passes (false); it looks again every second in any case, since blocks
// freed inside a transaction are usable at once without a signal.
func (p *Pool) waitForSpace(deadline time.Time) bool {
	left := time.Until(deadline)
	if left <= 0 {
		return false
	}
	p.mu.Lock()
	ch := p.spaceWaitLocked()
	p.mu.Unlock()
	t := time.NewTimer(min(left, time.Second))
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	return true
}

// underPolicy runs a write under the out-of-space policy.
func (p *Pool) underPolicy(write func() error) error {
	err := write()
	wait := p.opts.NoSpaceWait
	if wait == 0 || !errors.Is(err, ErrNoSpace) {
		return err
	}
	deadline := time.Now().Add(wait)
	if wait < 0 {
		deadline = time.Now().Add(100 * 365 * 24 * time.Hour)
	}
	for errors.Is(err, ErrNoSpace) && p.waitForSpace(deadline) {
		err = write()
	}
	return err
}

// Write is WriteAt under the pool's out-of-space policy (what the NBD
// and FUSE exports call).
func (v *Volume) Write(b []byte, off int64) (int, error) {
	var n int
	err := v.p.underPolicy(func() error {
		var err error
		n, err = v.WriteAt(b, off)
		return err
	})
	return n, err
}

// ZeroRange is WriteZeroes under the pool's out-of-space policy.
func (v *Volume) ZeroRange(off, n int64, unmap bool) error {
	return v.p.underPolicy(func() error { return v.WriteZeroes(off, n, unmap) })
}
