package unionfs

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

// crashPoint calls the options' Crash hook, if any, with this point's
// name. The hook of a crash test ends the process there, without any
// cleanup, as a power cut or kill -9 would; the library itself never
// exits. It is called only once Mount has returned: until then go-fuse
// may hold a file of the mount open (its epoll probe), and a process that
// dies closing a file of its own mount waits forever for the FLUSH it can
// no longer answer.
func (u *FS) crashPoint(name string) {
	if u.opts.Crash != nil {
		<-u.mounted
		u.opts.Crash(name)
	}
}
