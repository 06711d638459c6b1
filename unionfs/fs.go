// Package unionfs is the FUSE node tree of a union filesystem with kernel
// overlayfs semantics: lookup through ordered layers, merged readdir,
// atomic copy-up through a work directory, whiteouts, opaque directories
// and redirected directory renames.
//
// Locks, in the order they are taken (a lock is only ever taken while
// holding the ones above it on its branch):
//
//	ioModeOrder.mu              around whole OPEN, CREATE and RELEASE requests
//	dirHandle.mu                a directory listing is taken under it
//	└── FS.ns                   the namespace lock, under either of the above
//	    ├── node.mu             a parent's before its child's
//	    │   ├── file.mu         (newHandle: a handle is made under node.mu)
//	    │   └── inodeIndex.mu   (copy-up of a lower hard link, index.go)
//	    ├── inodeIndex.mu       a name change of an indexed hard link
//	    └── file.mu             switching a handle to the upper copy
//
// FS.ns: operations that change names (create, link, unlink, rmdir,
// rename) hold it for writing, the rest for reading, so the union-relative
// path of every node is stable while an operation runs. Unlink, rmdir and
// rename hold it until go-fuse has moved the node in its tree too
// (namespaceChanges), so no request sees a node at its old path. No path takes it
// for reading while it already holds it (a writer waiting in between
// would deadlock both): functions that expect it held end in NsHeld or
// say so in a Preconditions line, and their counterparts without the
// suffix take it themselves.
//
// Live branch changes (livebranch.go) hold ns for writing while they
// change the stack and the nodes' merged layers (node.mu under it, a
// parent's before its child's), and send the kernel's cache
// invalidations (NotifyEntry, NotifyContent) with no lock held: the
// kernel may wait on a request that waits on ns.
//
// implicitDirs.mu is held while a directory's handle is opened, which
// takes none of the union's locks.
//
// ioModeOrder.waitMu (the waits of a data change that passthrough
// readers of a lower file hold up, passthrough.go) is a leaf.
//
// node.mu guards the node's layer state, open-handle counts and
// serializes its copy-up. file.mu guards a handle's fd and whether it is
// still on the lower file. FS.refusedMu and the identity caches' locks
// are leaves: nothing is taken while holding them. inodeIndex.mu serializes
// making, linking and removing index entries and their link counts; it is
// a leaf too (a copy-up of a lower hard link copies the data under it).
package unionfs

import (
	"crypto/rand"
	"fmt"
	"github.com/unionmount/unionmount/internal/fuseloop"
	"hash/fnv"
	"log"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/whiteout"
)

// FS is one union: its layers and the options it was mounted with.
type FS struct {
	opts   Options
	upper  *layer   // nil for a read-only union
	lowers []*layer // topmost first
	// work is the fd of <workdir>/work, where copy-ups and new objects
	// are prepared before they are renamed into place.
	work int
	// selfUID and selfGID are the ids the daemon's new files get (see
	// madeAsCaller).
	selfUID, selfGID int
	// branched is set for an aufs union with writable branches below
	// read-only ones or several writable ones: upper is nil and changes
	// go to a branch chosen per object (see branches.go).
	branched bool
	// createRR is the next branch of the rr create policy.
	createRR atomic.Uint64
	markers  whiteout.Markers
	// wformat is the format new whiteouts are written in; with wauto a
	// refused device node switches it to Xattr. Guarded by ns: only
	// changes of names (ns held for writing) write whiteouts.
	wformat whiteout.Format
	wauto   bool
	// idXattr records a copied-up object's identity so that its inode
	// number survives copy-up and remounts.
	idXattr string
	// index is kernel overlay's inode index (index=on, see index.go);
	// nil when off.
	index *inodeIndex
	// relabels holds the inode numbers shown for copied-up names of
	// lower hard links (see relabel.go).
	relabels *relabels
	logger   *log.Logger

	// ns is the namespace lock (see the package doc).
	ns sync.RWMutex

	// writeback is set when the kernel is asked to cache writes (see
	// Mount); layer files are then opened for reading too.
	writeback bool
	// transport and whyNotIOURing say how requests reach the daemon
	// (see internal/fuseloop); set by Mount.
	transport, whyNotIOURing string
	// splicer answers large reads from the layer file (see file.Read);
	// set by Mount once the project's own loops serve the mount, nil
	// under go-fuse's.
	splicer atomic.Pointer[fuseloop.Server]
	// passthrough is set once the kernel has agreed to FUSE passthrough.
	passthrough atomic.Bool
	// daemonReads counts reads served by the daemon rather than by
	// passthrough.
	daemonReads atomic.Uint64

	// root is the root node, set by Mount (live branch changes start
	// from it).
	root *node
	// dirs holds the handles of directories read without an open; set
	// by Mount.
	dirs *implicitDirs

	// mounted is closed once Mount has returned (see crashPoint).
	mounted chan struct{}

	// orphanedPath is the path given to a node whose name is gone: a
	// name with a random part made at mount, so no layer holds it and
	// every call on it fails with ENOENT.
	orphanedPath string

	refusedMu sync.Mutex
	refused   map[string]bool // guarded by refusedMu
}

// Passthrough reports whether open upper files use FUSE passthrough.
func (u *FS) Passthrough() bool { return u.passthrough.Load() }

// DaemonReads reports how many read requests the daemon has served.
func (u *FS) DaemonReads() uint64 { return u.daemonReads.Load() }

// New opens the layers described by opts, which must have been
// validated. It prepares the work directory, clearing what an
// interrupted copy-up left there.
func New(opts Options, logger *log.Logger) (*FS, error) {
	if logger == nil {
		logger = log.New(os.Stderr, "unionmount: ", log.LstdFlags)
	}
	u := &FS{opts: opts, work: -1, selfUID: os.Geteuid(), selfGID: os.Getegid(), logger: logger, mounted: make(chan struct{}), relabels: newRelabels(),
		orphanedPath: ".unionmount-orphaned-" + rand.Text() + "/deleted"}
	var err error
	if u.wformat, u.wauto, err = whiteout.ParseFormat(opts.Whiteout); err != nil {
		return nil, badOption("%v", err)
	}
	u.markers = whiteout.Markers{Prefix: whiteout.TrustedPrefix}
	u.idXattr = "trusted.unionmount.id"
	if opts.UserXattr {
		u.markers.Prefix = whiteout.UserPrefix
		u.idXattr = "user.unionmount.id"
	}
	index := 0
	if opts.Upper != "" {
		l, err := openLayer(index, opts.Upper, true)
		if err != nil {
			return nil, err
		}
		u.upper = l
		index++
	}
	for i, p := range opts.Lowers {
		writable := len(opts.Branches) > i && opts.Branches[i].Writable() && !opts.ReadOnly
		l, err := openLayer(index, p, writable)
		if err != nil {
			u.Close()
			return nil, err
		}
		u.lowers = append(u.lowers, l)
		index++
		if writable {
			u.branched = true
			if err := u.prepareBranchWork(l); err != nil {
				u.Close()
				return nil, err
			}
		}
	}
	u.assignInoBits()
	if u.branched {
		u.setUpBranched()
	}
	if u.upper != nil && !opts.ReadOnly {
		if err := u.prepareWork(); err != nil {
			u.Close()
			return nil, err
		}
		if !opts.UserXattr && !u.trustedXattrsWork() {
			u.logger.Printf("trusted.* xattrs cannot be written on the upper layer: keeping markers in user.overlay.*")
			u.markers.Prefix = whiteout.UserPrefix
			u.idXattr = "user.unionmount.id"
		}
		u.chooseWhiteoutFormat()
		if opts.Index {
			if err := u.openIndex(); err != nil {
				u.Close()
				return nil, err
			}
		}
	}
	return u, nil
}

// Close releases the layer fds; Mount has it called as soon as the
// connection has ended (fuseloop.Options.Ended). It waits for a live
// branch change, which holds ns and the layers too; one that comes after
// finds no union to change. Closing twice does nothing.
func (u *FS) Close() {
	u.ns.Lock()
	defer u.ns.Unlock()
	if u.upper != nil {
		u.upper.close()
	}
	for _, l := range u.lowers {
		l.close()
	}
	if u.index != nil {
		u.index.dir.close()
	}
	if u.work >= 0 {
		unix.Close(u.work)
		u.work = -1
	}
}

// writable reports whether the union accepts changes.
func (u *FS) writable() bool {
	return (u.upper != nil || u.branched) && !u.opts.ReadOnly
}

// prepareWork creates <work>/work, empty, owned by the mounter with mode
// 0700, as kernel overlay does.
func (u *FS) prepareWork() error {
	if err := os.MkdirAll(u.opts.Work, 0o755); err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	scratch := filepath.Join(u.opts.Work, "work")
	if err := os.RemoveAll(scratch); err != nil {
		return fmt.Errorf("clear work dir %s: %w", scratch, err)
	}
	if err := os.Mkdir(scratch, 0o700); err != nil {
		return fmt.Errorf("create work dir %s: %w", scratch, err)
	}
	fd, err := unix.Open(scratch, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open work dir %s: %w", scratch, err)
	}
	u.work = fd
	return nil
}

// trustedXattrsWork probes whether trusted.* xattrs can be set in the
// work dir (they cannot without CAP_SYS_ADMIN in the initial namespace).
func (u *FS) trustedXattrsWork() bool {
	return trustedXattrsIn(u.work)
}

// trustedXattrsIn is trustedXattrsWork for the scratch dir work.
func trustedXattrsIn(work int) bool {
	name := tempName()
	if err := unix.Mkdirat(work, name, 0o700); err != nil {
		return false
	}
	defer unix.Unlinkat(work, name, unix.AT_REMOVEDIR)
	p := fmt.Sprintf("/proc/self/fd/%d/%s", work, name)
	return unix.Setxattr(p, "trusted.unionmount.probe", []byte("y"), 0) == nil
}

// assignInoBits gives each distinct filesystem among the layers a tag
// for the top bits of inode numbers, the upper's filesystem first with
// tag zero, as kernel overlay's xino does.
func (u *FS) assignInoBits() {
	seen := map[uint64]uint64{}
	next := uint64(0)
	all := append([]*layer{}, u.lowers...)
	if u.upper != nil {
		all = append([]*layer{u.upper}, all...)
	}
	for _, l := range all {
		tag, ok := seen[l.dev]
		if !ok {
			tag = next
			seen[l.dev] = tag
			next++
		}
		l.inoBits = tag << 56
	}
}

// inoFor maps a real inode number in layer l to the union's number.
func (u *FS) inoFor(l *layer, ino uint64) uint64 {
	n := ino ^ l.inoBits
	if n <= 1 {
		// 0 and 1 are reserved (1 is the union's root).
		n |= 1 << 55
	}
	return n
}

// pathGen separates distinct names of a lower hard link, which copy-up
// breaks apart as kernel overlay does without its index feature.
func pathGen(path string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(path))
	return h.Sum64() | 1
}

// chooseWhiteoutFormat settles whiteout=auto: device nodes where they can
// be made, else xattr whiteouts, else aufs files (which need nothing but
// plain files).
func (u *FS) chooseWhiteoutFormat() {
	if !u.wauto {
		return
	}
	for _, f := range []whiteout.Format{whiteout.Chardev, whiteout.Xattr} {
		tmp := tempName()
		err := u.markers.PrepareWhiteout(u.work, tmp, f)
		unix.Unlinkat(u.work, tmp, 0)
		if err == nil {
			u.wformat = f
			if f != whiteout.Chardev {
				u.logger.Printf("device nodes cannot be made here: writing %s whiteouts", f)
			}
			return
		}
	}
	u.wformat = whiteout.Aufs
	u.logger.Printf("neither device nodes nor overlay xattrs can be written here: writing aufs whiteouts")
}
