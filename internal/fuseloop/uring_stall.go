package fuseloop

// The stall watch: a request that blocks in its handler must not leave its
// CPU's queue deaf. The watch looks at every queue each stallAfter/2 while
// requests are being handled; a queue where nobody has waited on the ring
// for stallAfter gets a parked thread woken, or a new one. When no handler
// has run for quietTicks looks it sleeps until a handler starts, so an idle
// mount costs no wake-ups.

import (
	"sync"
	"sync/atomic"
	"time"
)

const quietTicks = 50

type stallWatch struct {
	queues []*uringQueue
	after  time.Duration

	asleep    atomic.Bool   // run waits on kick
	kick      chan struct{} // a handler started while asleep
	done      chan struct{}
	closeOnce sync.Once
}

func newStallWatch(queues []*uringQueue, after time.Duration) *stallWatch {
	return &stallWatch{queues: queues, after: after, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// busy is called as a handler starts.
func (w *stallWatch) busy() {
	if w.asleep.Load() {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

func (w *stallWatch) close() { w.closeOnce.Do(func() { close(w.done) }) }

func (w *stallWatch) run() {
	timer := time.NewTimer(w.after / 2)
	defer timer.Stop()
	quiet := 0
	for {
		select {
		case <-w.done:
			return
		case <-timer.C:
		}
		if w.look(time.Now()) {
			quiet = 0
		} else {
			quiet++
		}
		if quiet >= quietTicks {
			w.asleep.Store(true)
			// A handler that started before asleep was set did not kick;
			// look once more after setting it.
			if !w.look(time.Now()) {
				select {
				case <-w.kick:
				case <-w.done:
					return
				}
			}
			w.asleep.Store(false)
			quiet = 0
		}
		timer.Reset(w.after / 2)
	}
}

// look checks every queue and reports whether any handler is running.
func (w *stallWatch) look(now time.Time) (busy bool) {
	for _, q := range w.queues {
		if q.unstall(now, w.after) {
			busy = true
		}
	}
	return busy
}

// unstall gives the queue another thread if nobody has waited on its ring
// for after while handlers run. It reports whether a handler is running.
func (q *uringQueue) unstall(now time.Time, after time.Duration) (busy bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.finishedLocked() || q.handling == 0 {
		return false
	}
	if q.waiting || q.helping {
		return true
	}
	if q.deafSince.IsZero() {
		q.deafSince = now
		return true
	}
	if now.Sub(q.deafSince) < after {
		return true
	}
	q.helping = true
	if q.parked > 0 {
		q.cond.Signal()
		return true
	}
	q.threads++
	q.t.threads.Add(1)
	go q.extraThread()
	return true
}
