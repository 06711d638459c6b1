package unionfs

import "os"

// Named crash points of copy-up. A crash at any of them must leave either
// no upper copy or a whole one, and nothing a remount does not clear.
const (
	// CrashCopyUpData: data copied into the work dir, no metadata yet.
	CrashCopyUpData = "copyup-data"
	// CrashCopyUpBeforeInstall: the copy is complete in the work dir.
	CrashCopyUpBeforeInstall = "copyup-before-install"
	// CrashCopyUpAfterInstall: the copy is in the upper, the caller's
	// change not yet made.
	CrashCopyUpAfterInstall = "copyup-after-install"
)

// CrashPoints lists the named crash points, for tests that visit each.
func CrashPoints() []string {
	return []string{CrashCopyUpData, CrashCopyUpBeforeInstall, CrashCopyUpAfterInstall}
}

// crashExitCode is the status a crash point exits with.
const crashExitCode = 86

// crashPoint ends the process when the options name this point, without
// any cleanup, as a power cut or kill -9 would. It waits until Mount has
// returned: until then go-fuse may hold a file of the mount open (its
// epoll probe), and a process that dies closing a file of its own mount
// waits forever for the FLUSH it can no longer answer.
func (u *FS) crashPoint(name string) {
	if u.opts.CrashAt == name {
		<-u.mounted
		u.logger.Printf("crash point %s reached: exiting", name)
		os.Exit(crashExitCode)
	}
}
