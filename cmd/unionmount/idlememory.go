package main

import (
	"runtime/metrics"
	"time"
)

// idleAfter is how long a daemon goes (nearly) without allocating
// before it gives the memory it freed back to the system, restAllocs
// what it may allocate in that time and still be at rest, and
// worthReleasing how much it must have allocated since the last release
// for another to be worth a collection.
const (
	idleAfter      = 2 * time.Second
	restAllocs     = 64 << 10
	worthReleasing = 4 << 20
)

// releaseMemoryWhenIdle returns freed heap memory to the system once
// each time the daemon comes to rest after work. The Go heap grows to
// twice what it holds between collections and gives pages back only
// slowly: a union that read a tree once would keep that headroom for as
// long as its container lives, and a host runs hundreds. Rest is seen
// as (almost) no allocation for idleAfter, so a busy daemon never pays
// for it.
// It looks every period, calls release (debug.FreeOSMemory in the
// daemon), and returns when stop is closed.
func releaseMemoryWhenIdle(stop <-chan struct{}, period time.Duration, release func()) {
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	allocated := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	last, released := allocated(), allocated()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		now := allocated()
		if now-last < restAllocs && now-released >= worthReleasing {
			release()
			// The collection allocates a little itself.
			released = allocated()
			now = released
		}
		last = now
	}
}
