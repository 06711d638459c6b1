package unionfs

import (
	"fmt"

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
)

// ParseCreatePolicy reads a create= value.
func ParseCreatePolicy(s string) (CreatePolicy, error) {
	switch CreatePolicy(s) {
	case CreateTDP:
		return CreatePolicy(s), nil
	case "top-down-parent":
		return CreateTDP, nil
	}
	return "", badOption("create=%q: want tdp", s)
}

// createTarget picks the branch for a new name in the directory whose
// state is ps; limit is the index of the branch whose whiteout hides the
// name (-1: none).
func (u *FS) createTarget(ps nodeState, limit int) (*layer, error) {
	if len(ps.lowers) == 0 {
		return nil, fmt.Errorf("create: directory gone: %w", unix.ENOENT)
	}
	ok := func(l *layer) bool { return l.writable && (limit < 0 || l.index <= limit) }
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
