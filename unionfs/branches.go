package unionfs

import (
	"fmt"
	"strings"
)

// aufs's branch model, for br= mounts.
//
// A br= list whose only writable branch is the leftmost one is kernel
// overlay's shape: it becomes Upper and Lowers and takes exactly the
// overlay code paths. Any other list (a writable branch below a
// read-only one, or several writable branches) is a branched union:
// every branch is a layer in Lowers order, each knowing whether it is
// writable, and the union has no upper. Changes then go to a branch
// chosen per object:
//
//   - an object on a writable branch is changed in place there;
//   - an object on a read-only branch is copied up to the topmost
//     writable branch above it first, and without one the change fails
//     with EROFS;
//   - a new name goes where the create policy says (createpolicy.go);
//   - a whiteout goes on the writable branch that hides the name: the
//     object's own branch when it is writable, else the topmost
//     writable branch above it;
//   - a rename moves a non-directory within its writable branch; any
//     other rename (a directory, an object on a read-only branch, a
//     target another branch holds or a higher branch would hide) is
//     EXDEV, and mv copies and removes instead.
//
// Each writable branch keeps its scratch dir inside itself, under a
// .wh. name that never shows through the union (workDirName).

// Branch is one aufs branch: a directory and how it may be used.
type Branch struct {
	Path string
	// Mode is rw, ro or rr (aufs's "real read-only": nothing else
	// changes it either; here it means what ro does).
	Mode string
	// Attrs are aufs's +wh / +nolwh attributes, kept as given: whiteouts
	// on every branch are honoured here regardless.
	Attrs string
}

// Writable reports whether changes may be made on the branch.
func (b Branch) Writable() bool { return b.Mode == "rw" }

// String is the branch as br= and `unionmount branch` spell it.
func (b Branch) String() string {
	s := b.Path + "=" + b.Mode
	if b.Attrs != "" {
		s += "+" + b.Attrs
	}
	return s
}

// workDirName is the scratch dir of a branched union's writable branch,
// inside the branch: a .wh. name, so lookups and listings never show it
// (aufs keeps .wh..wh.orph and .wh..wh.plnk there alike).
const workDirName = ".wh..wh.unionmount"

// ParseBranch reads one DIR[=PERM] of a br= list; first says whether it
// is the leftmost branch (writable unless told otherwise).
func ParseBranch(br string, first bool) (Branch, error) {
	dir, perm := br, ""
	if at := strings.LastIndexByte(br, '='); at >= 0 {
		dir, perm = br[:at], br[at+1:]
	}
	if dir == "" {
		return Branch{}, badOption("branch %q has no directory", br)
	}
	base, attrs, _ := strings.Cut(perm, "+")
	switch base {
	case "":
		base = "ro"
		if first {
			base = "rw"
		}
	case "rw", "ro", "rr":
	default:
		return Branch{}, badOption("branch %s has permission %q: want rw, ro or rr (with +wh or +nolwh)", dir, perm)
	}
	for _, a := range strings.Split(attrs, "+") {
		switch a {
		case "", "wh", "nolwh", "unpin", "coo_reg", "coo_all", "moo", "fhsm", "icexsec", "icexsys", "icextr", "icexusr", "icexoth", "icex":
		default:
			return Branch{}, badOption("branch %s has attribute %q: want wh or nolwh", dir, a)
		}
	}
	return Branch{Path: dir, Mode: base, Attrs: attrs}, nil
}

// parseBranches reads aufs's branch list, DIR[=PERM]:DIR[=PERM]...,
// leftmost on top.
func parseBranches(list string) ([]Branch, error) {
	var out []Branch
	for i, br := range splitEscaped(list, ':') {
		b, err := ParseBranch(br, i == 0)
		if err != nil {
			return nil, fmt.Errorf("br=: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

// branchLayers maps branches to kernel overlay's shape when they fit it
// (at most one writable branch, leftmost), else to a branched union.
func branchLayers(branches []Branch) (upper string, lowers []string, branched []Branch) {
	writable := 0
	for _, b := range branches {
		if b.Writable() {
			writable++
		}
	}
	if writable == 0 || (writable == 1 && branches[0].Writable() && len(branches) > 1) {
		for i, b := range branches {
			if i == 0 && b.Writable() {
				upper = b.Path
				continue
			}
			lowers = append(lowers, b.Path)
		}
		return upper, lowers, nil
	}
	for _, b := range branches {
		lowers = append(lowers, b.Path)
	}
	return "", lowers, branches
}
