package unionfs

import (
	"context"
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var _ fs.NodeOpener = (*node)(nil)

// Open opens the object's topmost copy. Opening a lower file for writing
// (or with O_TRUNC) copies it up first; with O_TRUNC the data is not
// copied, since it would be thrown away. Such an open waits for no
// reader: while passthrough opens read the lower file it fails with
// ETXTBSY (see passthrough.go; ioModeOrder retries it a while).
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	u := n.ufs
	u.ns.RLock()
	defer u.ns.RUnlock()
	openFlags := u.flagsBelow(flags, 0)
	writing := openFlags&unix.O_ACCMODE != unix.O_RDONLY || openFlags&unix.O_TRUNC != 0
	if writing {
		if err := n.beginDataChange(); err != nil {
			return nil, 0, u.errno(err)
		}
		defer n.endDataChange()
		if err := u.copyUp(n, openFlags&unix.O_TRUNC == 0); err != nil {
			return nil, 0, u.errno(err)
		}
	}
	// A second attempt opens the upper copy a racing copy-up made; more
	// would mean the node keeps changing place underneath.
	for range 3 {
		f, fuseFlags, err := n.openTop(ctx, flags, openFlags)
		if errors.Is(err, errCopiedUnderneath) {
			continue
		}
		if err != nil {
			return nil, 0, u.errno(err)
		}
		return f, fuseFlags, 0
	}
	return nil, 0, syscall.ESTALE
}

// openTop opens the layer file that holds the node's data (its
// topmost copy, or the lower one of a metadata-only copy) as a handle.
//
// Preconditions: ns is held.
func (n *node) openTop(ctx context.Context, flags uint32, openFlags int) (*file, uint32, error) {
	u := n.ufs
	st := n.state()
	ref, ok := u.top(st, n.path())
	if st.metacopy {
		ref = st.lowers[0] // read-only: the data is still below
	}
	if !ok {
		return nil, 0, unix.ENOENT
	}
	fd, err := ref.l.open(ref.path, openFlags|unix.O_NOFOLLOW, 0)
	if err == unix.EACCES && int(flags)&unix.O_ACCMODE == unix.O_WRONLY && openFlags&unix.O_ACCMODE == unix.O_RDWR {
		// Not readable by the mounter (an unprivileged one): write-only,
		// as asked; the kernel then reads partial pages from elsewhere.
		openFlags = openFlags&^unix.O_ACCMODE | unix.O_WRONLY
		fd, err = ref.l.open(ref.path, openFlags|unix.O_NOFOLLOW, 0)
	}
	if err == unix.EPERM && openFlags&unix.O_NOATIME != 0 {
		// The kernel let the caller ask (it owns the file or has
		// CAP_FOWNER); a mounter without that right reads with atime.
		openFlags &^= unix.O_NOATIME
		fd, err = ref.l.open(ref.path, openFlags|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return nil, 0, err
	}
	if openFlags&unix.O_TRUNC != 0 {
		if err := dropPrivileges(fd, "", callerPrivileged(ctx)); err != nil {
			unix.Close(fd)
			return nil, 0, err
		}
	}
	var src handleSource
	if !st.dataUpper() && !(u.branched && ref.l.writable) {
		src.lower = ref.l
	} else if openFlags&unix.O_ACCMODE != unix.O_RDONLY {
		src.privileged = hasPrivileges(fd)
	}
	f, fuseFlags, err := n.newHandle(fd, openFlags, src)
	if err != nil {
		unix.Close(fd)
		return nil, 0, err
	}
	return f, fuseFlags, nil
}

// flagsBelow are the open flags for the layer file behind a union open.
// Only flags that mean something for the layer file pass (layerOpenFlags,
// less what drop names): the kernel's FUSE open carries its own bits too,
// such as __FMODE_EXEC (0x20) for an execve, which openat2 refuses with
// EINVAL, and O_CREAT, O_EXCL, O_APPEND and O_NOCTTY are the union's to
// handle. O_DIRECT is dropped too: the kernel's FUSE side still keeps the
// caller's I/O out of the union's page cache, and passthrough applies
// the caller's O_DIRECT to the backing file itself; the reads and writes
// the daemon serves go through the host's page cache, as fuse-overlayfs
// does, instead of making a disk round trip from a buffer whose alignment
// the caller never chose. With the writeback cache a write-only file is
// opened for reading too: the kernel reads the rest of a page it writes
// part of through any handle of the file.
func (u *FS) flagsBelow(flags uint32, drop int) int {
	f := int(flags) & layerOpenFlags &^ drop
	if u.writeback && f&unix.O_ACCMODE == unix.O_WRONLY {
		f = f&^unix.O_ACCMODE | unix.O_RDWR
	}
	return f
}

// layerOpenFlags are the open flags a union open hands on to the layer
// file: the access mode, truncation, and the flags that change how the
// file's own I/O behaves. Anything else a FUSE open carries is either the
// union's to handle or the kernel's own business.
const layerOpenFlags = unix.O_ACCMODE | unix.O_TRUNC | unix.O_NONBLOCK |
	unix.O_DSYNC | unix.O_SYNC | unix.O_NOATIME | unix.O_LARGEFILE

// newHandle wraps a freshly opened layer fd as a union file handle,
// served by the kernel (passthrough) or by the daemon as
// choosePassthroughLocked decides (see passthrough.go). It fails, and
// leaves fd open, only as choosePassthroughLocked does.
//
// A daemon-served open keeps the kernel's page cache of the file
// (FOPEN_KEEP_CACHE) when names and attributes may be cached at all and
// no passthrough writer has changed the data behind the cache since the
// last open that dropped it: every other change of a file's data goes
// through the kernel (writes, truncation, hole punching), which updates
// or drops the cached pages itself.
func (n *node) newHandle(fd, flags int, src handleSource) (*file, uint32, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	passthrough, err := n.choosePassthroughLocked(src, flags)
	if err != nil {
		return nil, 0, err
	}
	var fuseFlags uint32
	if !passthrough {
		if n.ufs.opts.CacheTimeout > 0 && !n.pageCacheStale {
			fuseFlags |= fuse.FOPEN_KEEP_CACHE
		}
		n.pageCacheStale = false
	}
	f := newFile(n, fd, flags, src.lower != nil, passthrough)
	if n.openFiles == nil {
		n.openFiles = make(map[*file]struct{})
	}
	n.openFiles[f] = struct{}{}
	f.dropPrivileges = src.privileged && !passthrough
	return f, fuseFlags, nil
}
