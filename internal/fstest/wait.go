package fstest

import "time"

// Patience is how long a test waits for what another process does in its
// own time (a daemon starting, a mount showing up or going, a loop device
// letting go) before it fails. CI runs `go test ./...` on two cores, two
// packages at once, each starting FUSE daemons, podman and qemu: a step
// that takes milliseconds on a quiet machine takes seconds there. The
// bound only decides how long a real failure takes to be reported; a
// test passes as soon as the condition holds.
const Patience = 60 * time.Second

// WaitFor polls cond every 10 ms until it holds or limit has passed,
// and reports whether it held. Tests use it for what another process
// does in its own time (a mount showing up, a daemon exiting), with
// Patience as the limit; a test that needs a fixed order of its own
// steps needs no polling.
func WaitFor(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
