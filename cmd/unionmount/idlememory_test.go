package main

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

var memorySink []byte

// allocate makes n bytes of garbage.
func allocate(n int) {
	for ; n > 0; n -= 1 << 20 {
		memorySink = make([]byte, 1<<20)
	}
	memorySink = nil
}

// The daemon gives memory back once each time it comes to rest after
// work, never while it works, and not again while it stays at rest.
func TestFreedMemoryGoesBackOnceEachTimeTheDaemonRests(t *testing.T) {
	const period = 50 * time.Millisecond
	var releases atomic.Int32
	stop := make(chan struct{})
	defer close(stop)
	go releaseMemoryWhenIdle(stop, period, func() { releases.Add(1) })

	time.Sleep(4 * period)
	assert.Zero(t, releases.Load(), "nothing to give back before any work")

	allocate(2 * worthReleasing)
	time.Sleep(5 * period)
	assert.EqualValues(t, 1, releases.Load(), "given back once at rest after work")
	time.Sleep(5 * period)
	assert.EqualValues(t, 1, releases.Load(), "not again while at rest")

	// Work for ten periods: allocating all the time, it never rests.
	for end := time.Now().Add(10 * period); time.Now().Before(end); {
		allocate(1 << 20)
		time.Sleep(period / 10)
	}
	assert.EqualValues(t, 1, releases.Load(), "nothing given back while working")
	time.Sleep(5 * period)
	assert.EqualValues(t, 2, releases.Load(), "given back again at rest after the work")
}
