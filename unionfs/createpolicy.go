package unionfs

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CreatePolicy is aufs's create= setting: which writable branch a new
// name of a branched union goes on (see branches.go).
type CreatePolicy string

// The create policies. Each picks among the writable branches where the
// new name would show: at or above the branch whose whiteout hides the
// name, and holding the parent directory or lying above its lowest
// merged copy (the parent is then copied there).
const (
	// CreateTDP (top-down-parent, aufs's default) picks the topmost
	// writable branch holding the parent directory, else the topmost
	// writable branch above the parent's topmost copy.
	CreateTDP CreatePolicy = "tdp"
	// CreateRR (round robin) takes the writable branches in turn.
	CreateRR CreatePolicy = "rr"
	// CreateMFS (most free space) picks the writable branch whose
	// filesystem has the most blocks available, looked at on each
	// create (aufs caches the figure for mfs:SECONDS; the seconds are
	// accepted and ignored).
	CreateMFS CreatePolicy = "mfs"
)

// ParseCreatePolicy reads a create= value.
func ParseCreatePolicy(s string) (CreatePolicy, error) {
	name, secs, hasSecs := strings.Cut(s, ":")
	switch CreatePolicy(name) {
	case CreateTDP, "top-down-parent":
		if !hasSecs {
			return CreateTDP, nil
		}
	case CreateRR, "round-robin":
		if !hasSecs {
			return CreateRR, nil
		}
	case CreateMFS, "most-free-space":
		if _, err := strconv.ParseUint(secs, 10, 32); !hasSecs || err == nil {
			return CreateMFS, nil
		}
	}
	return "", badOption("create=%q: want tdp, rr or mfs[:SECONDS]", s)
}

// createTarget picks the branch for a new name in the directory whose
// state is ps; limit is the index of the branch whose whiteout hides the
// name (-1: none).
func (u *FS) createTarget(ps nodeState, limit int) (*layer, error) {
	if len(ps.lowers) == 0 {
		return nil, fmt.Errorf("create: directory gone: %w", unix.ENOENT)
	}
	ok := func(l *layer) bool { return l.writable && (limit < 0 || l.index <= limit) }
	switch u.opts.Create {
	case CreateRR, CreateMFS:
		// Any writable branch where the name shows: at or above the
		// lowest merged copy of the parent (which is then copied there).
		lowest := ps.lowers[len(ps.lowers)-1].l.index
		var cands []*layer
		for _, l := range u.lowers {
			if ok(l) && l.index <= lowest {
				cands = append(cands, l)
			}
		}
		if len(cands) == 0 {
			return nil, unix.EROFS
		}
		if u.opts.Create == CreateRR {
			return cands[(u.createRR.Add(1)-1)%uint64(len(cands))], nil
		}
		return mostFree(cands)
	}
	for _, r := range ps.lowers {
		if ok(r.l) {
			return r.l, nil
		}
	}
	if t := u.writableAbove(ps.lowers[0].l.index); t != nil {
		return t, nil
	}
	return nil, unix.EROFS
}

// mostFree returns the branch whose filesystem has the most blocks
// available to unprivileged users, the topmost on a tie.
func mostFree(cands []*layer) (*layer, error) {
	var best *layer
	var bestFree uint64
	for _, l := range cands {
		var s unix.Statfs_t
		if err := unix.Fstatfs(l.fd, &s); err != nil {
			return nil, fmt.Errorf("statfs %s: %w", l.path, err)
		}
		if free := s.Bavail * uint64(s.Bsize); best == nil || free > bestFree {
			best, bestFree = l, free
		}
	}
	return best, nil
}
