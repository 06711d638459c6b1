package unionfs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Which opens the kernel serves itself (FUSE passthrough), and what that
// means for copy-up.
//
// The kernel gives a FUSE inode at most one backing file while
// passthrough opens of it exist, and refuses a daemon-served open of an
// inode that has one (and a passthrough open of one that has
// daemon-served opens): every open of a node is one kind or the other,
// and all passthrough opens read and write the same real file.
//
// Upper files: a node's first open decides, as before; a file whose
// writes must clear privileges (killpriv.go) is daemon-served.
//
// Lower files (passthrough=on, the default): a read-only open of a file
// whose data is in a lower layer registers the lower file itself as the
// backing file, so every union over that lower reads the one copy of
// its pages in the host's page cache, as kernel overlay does. The node
// then has a lower backing file (node.lowerBacking) until its last
// passthrough open is released.
//
// Kernel overlay moves a reader of a lower file to the upper copy once
// the file is copied up; the kernel cannot move a FUSE passthrough open
// to another backing file. So while a node has a lower backing file its
// data must not change: an open for writing or with O_TRUNC, and a
// truncate(2), first pass beginDataChange, which refuses them with
// ETXTBSY while the lower backing file exists. ioModeOrder retries such
// a request at each release for up to lowerReadersGrace before the
// caller sees ETXTBSY. As the data cannot change, other opens of the
// node (also read-only opens of an upper copy a chmod made) share the
// lower backing file: they read the same bytes.
//
// A data change in flight (node.dataChanges) keeps new lower opens
// daemon-served, so the copy-up it makes can move them to the upper copy
// (file.current), as every daemon-served lower open is moved.

// errLowerReaders is a data change refused because passthrough opens
// read the node's lower file (ETXTBSY at the FUSE boundary).
var errLowerReaders = fmt.Errorf("the file is open for reading through its lower layer's file: %w", unix.ETXTBSY)

// errCopiedUnderneath is a lower open that lost a race with a copy-up:
// the caller opens again, now the upper copy.
var errCopiedUnderneath = errors.New("copied up while being opened")

// beginDataChange admits a request that will change the node's data
// (copy it up for writing, truncate it), or refuses it with
// errLowerReaders while passthrough opens read the node's lower file.
// Each admitted change ends with endDataChange.
func (n *node) beginDataChange() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.passthroughOpens > 0 && n.lowerBacking {
		return errLowerReaders
	}
	n.dataChanges++
	return nil
}

func (n *node) endDataChange() {
	n.mu.Lock()
	n.dataChanges--
	n.mu.Unlock()
}

// handleSource says where a new handle's fd points.
type handleSource struct {
	// lower is the lower layer holding the file the fd reads; nil when
	// the fd is on the node's data layer (upper, or a writable branch).
	lower *layer
	// privileged is set when writes through the fd must clear set-id
	// bits or capabilities (killpriv.go).
	privileged bool
}

// choosePassthroughLocked decides whether a new handle of n is served by
// the kernel (passthrough) or by the daemon, and counts it. It fails
// with errCopiedUnderneath for a lower fd of a node whose data has been
// copied up since the caller looked.
//
// Preconditions: n.mu is held.
func (n *node) choosePassthroughLocked(src handleSource, flags int) (passthrough bool, err error) {
	onLower := src.lower != nil
	if onLower && n.st.dataUpper() {
		return false, errCopiedUnderneath
	}
	u := n.ufs
	writing := flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
	switch {
	case !u.passthrough.Load(), n.cachedOpens > 0:
		passthrough = false
	case n.passthroughOpens > 0:
		if n.lowerBacking && writing {
			// beginDataChange keeps writers out; never write
			// through a lower backing file.
			return false, errLowerReaders
		}
		passthrough = true // the kernel uses the backing file there is
	case onLower:
		passthrough = u.opts.LowerPassthrough && src.lower.backsPassthrough && !writing && n.dataChanges == 0
		n.lowerBacking = passthrough
	default:
		passthrough = !src.privileged
		n.lowerBacking = false
	}
	if passthrough {
		n.passthroughOpens++
		if writing {
			n.pageCacheStale = true
		}
	} else {
		n.cachedOpens++
	}
	return passthrough, nil
}
