package unionfs

import (
	"fmt"
	"strconv"
	"strings"
)

// OverflowID is the id shown for an owner a mapping does not cover, as
// the kernel shows ids a user namespace does not map.
const OverflowID = 65534

// idRange maps count ids from stored (as the layers hold them) to shown
// (as the mount presents them).
type idRange struct {
	stored, shown, count uint32
}

// IDMap is fuse-overlayfs's uidmapping=/gidmapping=: the layers keep a
// container's ids and the mount shows them shifted, so that one storage
// serves user namespaces of different mappings without a chown. The zero
// value maps every id to itself.
type IDMap struct {
	ranges []idRange
}

// ParseIDMap reads "STORED:SHOWN:COUNT[:STORED:SHOWN:COUNT...]" (commas
// between triples work too): stored ids STORED..STORED+COUNT-1 show as
// SHOWN..SHOWN+COUNT-1.
func ParseIDMap(s string) (IDMap, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ':' || r == ',' })
	if len(fields) == 0 || len(fields)%3 != 0 {
		return IDMap{}, fmt.Errorf("%q: want STORED:SHOWN:COUNT triples", s)
	}
	var m IDMap
	for i := 0; i < len(fields); i += 3 {
		var v [3]uint32
		for j := range v {
			n, err := strconv.ParseUint(fields[i+j], 10, 32)
			if err != nil {
				return IDMap{}, fmt.Errorf("%q: %q is not an id", s, fields[i+j])
			}
			v[j] = uint32(n)
		}
		r := idRange{stored: v[0], shown: v[1], count: v[2]}
		if r.count == 0 {
			return IDMap{}, fmt.Errorf("%q: a range of zero ids", s)
		}
		if uint64(r.stored)+uint64(r.count) > 1<<32 || uint64(r.shown)+uint64(r.count) > 1<<32 {
			return IDMap{}, fmt.Errorf("%q: a range runs past the largest id", s)
		}
		for _, o := range m.ranges {
			if overlap(o.stored, o.count, r.stored, r.count) || overlap(o.shown, o.count, r.shown, r.count) {
				return IDMap{}, fmt.Errorf("%q: ranges overlap", s)
			}
		}
		m.ranges = append(m.ranges, r)
	}
	return m, nil
}

func overlap(a, an, b, bn uint32) bool {
	return uint64(a) < uint64(b)+uint64(bn) && uint64(b) < uint64(a)+uint64(an)
}

// Identity reports whether the map leaves every id as it is.
func (m IDMap) Identity() bool { return len(m.ranges) == 0 }

// Shown is the id the mount presents for a stored id: OverflowID when no
// range covers it.
func (m IDMap) Shown(stored uint32) uint32 {
	if m.Identity() {
		return stored
	}
	for _, r := range m.ranges {
		if stored >= r.stored && stored-r.stored < r.count {
			return r.shown + (stored - r.stored)
		}
	}
	return OverflowID
}

// Stored is the id the layers keep for an id given through the mount (a
// caller's, or chown's argument); ok is false when no range covers it.
func (m IDMap) Stored(shown uint32) (id uint32, ok bool) {
	if m.Identity() {
		return shown, true
	}
	for _, r := range m.ranges {
		if shown >= r.shown && shown-r.shown < r.count {
			return r.stored + (shown - r.shown), true
		}
	}
	return OverflowID, false
}
