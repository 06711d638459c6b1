package nbd

import "sync"

// budget bounds the bytes of requests in flight: a request takes its
// bytes before its payload is read or its data is fetched, and gives
// them back once its reply has been written to the socket. A reader that
// cannot take them stops reading its connection, so a client that does
// not read its replies is held back (backpressure) rather than served
// into memory. Waiters are served in order, so a large request is not
// starved by small ones.
type budget struct {
	mu      sync.Mutex
	limit   int64
	used    int64 // guarded by mu
	waiters []*budgetWaiter
}

type budgetWaiter struct {
	n     int64
	ready chan struct{}
}

func newBudget(limit int64) *budget { return &budget{limit: limit} }

// acquire takes n bytes (at most the limit), waiting until they are free
// or stop is closed; it reports whether it took them.
func (b *budget) acquire(n int64, stop <-chan struct{}) bool {
	b.mu.Lock()
	if len(b.waiters) == 0 && b.used+n <= b.limit {
		b.used += n
		b.mu.Unlock()
		return true
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return true
	case <-stop:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Granted while stopping: give it back.
		b.used -= n
		b.grantLocked()
		return false
	default:
	}
	for i, o := range b.waiters {
		if o == w {
			b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
			break
		}
	}
	b.grantLocked()
	return false
}

// release gives back n bytes taken by acquire.
func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.grantLocked()
	b.mu.Unlock()
}

func (b *budget) grantLocked() {
	for len(b.waiters) > 0 && b.used+b.waiters[0].n <= b.limit {
		w := b.waiters[0]
		b.waiters = b.waiters[1:]
		b.used += w.n
		close(w.ready)
	}
}

// inUse reports the bytes taken.
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
