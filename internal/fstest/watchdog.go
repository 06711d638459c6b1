package fstest

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// AbortAfter aborts the FUSE connection of the mount at dir if stop is
// not called within d, so a server that stops answering fails the test
// (its callers get ENOTCONN) instead of hanging the whole run. It reports
// through aborted whether it had to.
func AbortAfter(dir string, d time.Duration) (stop func(), aborted func() bool) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return func() {}, func() bool { return false }
	}
	conn := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(st.Dev))
	fired := make(chan struct{})
	timer := time.AfterFunc(d, func() {
		if _, err := os.Stat("/sys/fs/fuse/connections"); err == nil {
			unix.Mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, "")
		}
		os.WriteFile(conn, []byte("1"), 0)
		close(fired)
	})
	return func() { timer.Stop() }, func() bool {
		select {
		case <-fired:
			return true
		default:
			return false
		}
	}
}
