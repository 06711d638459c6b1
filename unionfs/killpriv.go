package unionfs

import (
	"context"
	"errors"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// The union negotiates FUSE_HANDLE_KILLPRIV_V2: the kernel then stops
// asking for security.capability before every write, and the daemon
// clears what a change to a file must clear, as the kernel would: the
// set-user-ID bit and an executable file's set-group-ID bit when an
// unprivileged caller writes or truncates, and a security.capability
// xattr on any write or truncation. The layers' filesystem does some of
// it for the daemon's own writes, but not all (before Linux 6.2 a
// privileged writer kept set-id bits), and the kernel's cached attributes
// only learn of it through a write the daemon answers: so files that
// carry any of these are never opened with passthrough.
const capHandleKillprivV2 = 1 << 28

const capabilityXattr = "security.capability"

// callerPrivileged reports whether the caller may keep set-id bits on a
// file it writes (CAP_FSETID; root of the mount's user namespace here).
func callerPrivileged(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	return !ok || c.Uid == 0
}

// keptMode is mode with the set-id bits a write by an unprivileged
// caller clears; changed is false when nothing is to clear.
func keptMode(mode uint32) (kept uint32, changed bool) {
	kept = mode
	if mode&unix.S_ISUID != 0 {
		kept &^= unix.S_ISUID
	}
	if mode&(unix.S_ISGID|unix.S_IXGRP) == unix.S_ISGID|unix.S_IXGRP {
		kept &^= unix.S_ISGID
	}
	return kept, kept != mode
}

// hasPrivileges reports whether a write to the open regular file fd
// would have something to clear.
func hasPrivileges(fd int) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return true // cannot tell: take the careful path
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	if _, changed := keptMode(st.Mode); changed {
		return true
	}
	_, err := unix.Fgetxattr(fd, capabilityXattr, nil)
	return err == nil
}

// dropPrivileges clears what a write or truncation by a caller
// (privileged or not) clears on the object at path under dirfd ("" for
// dirfd itself, an open file).
func dropPrivileges(dirfd int, path string, privileged bool) error {
	var err error
	if path == "" {
		err = unix.Fremovexattr(dirfd, capabilityXattr)
	} else {
		err = sysx.Removexattr(dirfd, path, capabilityXattr)
	}
	if err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	if privileged {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, path, &st, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	kept, changed := keptMode(st.Mode & 0o7777)
	if !changed {
		return nil
	}
	if path == "" {
		return unix.Fchmod(dirfd, kept)
	}
	return unix.Fchmodat(dirfd, path, kept, 0)
}
