package fstest

import "time"

// WaitFor polls cond every 10 ms until it holds or limit has passed,
// and reports whether it held. Tests use it for what another process
// does in its own time (a mount showing up, a daemon exiting); a test
// that needs a fixed order of its own steps needs no polling.
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
