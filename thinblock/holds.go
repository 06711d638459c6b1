package thinblock

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
)

// This file keeps the rule that a volume someone has open is not
// deleted. Whoever opens a volume for a client (an NBD connection that
// chose it, an open of its file through the FUSE export) takes a Hold,
// and DeleteVolumes refuses a held volume. Both run under Pool.mu, so an
// open racing a delete either holds the volume first, and the delete is
// refused with EBUSY, or finds it gone (ErrNoVolume): there is no window
// between a delete's check and the delete itself.

// Hold is a claim on a volume by one of its users; Release ends it.
type Hold struct {
	p    *Pool
	id   uint64
	once sync.Once
}

// HeldError refuses deleting a volume that is held; it is EBUSY.
type HeldError struct {
	ID uint64
	// Holders names who holds it, as given to Pool.Hold.
	Holders []string
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("volume %d is in use: %s: %v", e.ID, strings.Join(e.Holders, "; "), syscall.EBUSY)
}

func (e *HeldError) Unwrap() error { return syscall.EBUSY }

// Hold claims volume id for holder (a phrase naming who, shown when a
// delete is refused), or fails with ErrNoVolume when it is gone.
func (p *Pool) Hold(id uint64, holder string) (*Hold, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return nil, err
	}
	if _, err := p.detailsLocked(id); err != nil {
		return nil, err
	}
	h := &Hold{p: p, id: id}
	if p.holds[id] == nil {
		p.holds[id] = map[*Hold]string{}
	}
	p.holds[id][h] = holder
	return h, nil
}

// Release ends the claim; a second call does nothing.
func (h *Hold) Release() {
	h.once.Do(func() {
		h.p.mu.Lock()
		defer h.p.mu.Unlock()
		delete(h.p.holds[h.id], h)
		if len(h.p.holds[h.id]) == 0 {
			delete(h.p.holds, h.id)
		}
	})
}

// heldLocked returns the refusal of deleting id when it is held, or nil.
//
// Preconditions: p.mu is held.
func (p *Pool) heldLocked(id uint64) error {
	hs := p.holds[id]
	if len(hs) == 0 {
		return nil
	}
	names := make([]string, 0, len(hs))
	for _, n := range hs {
		names = append(names, n)
	}
	sort.Strings(names)
	return &HeldError{ID: id, Holders: names}
}
