package thinblock

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"unicode"
)

// Volume attributes (a name, read-only, the origin of a snapshot) live in
// a B-tree of their own keyed by volume id, whose root the superblock
// keeps (AttrsRoot), so they commit in the same transaction as the
// volume they describe. dm-thin has no such tree: thin_dump leaves them
// out, and a restored pool has volumes without attributes. A volume made
// before attributes existed has no entry (VolumeInfo.HasAttrs false).

// Attrs are the attributes chosen when a volume is made.
type Attrs struct {
	Name     string
	ReadOnly bool
}

// MaxNameLen is the longest volume name, in bytes.
const MaxNameLen = attrsSize - 17

// attrsSize is the attribute tree's value size.
const attrsSize = 128

// AttrsValueSize is the attribute tree's value size, for the checker.
const AttrsValueSize = attrsSize

const (
	attrReadOnly  = 1
	attrHasOrigin = 2
)

// volumeAttrs is one entry of the attribute tree.
type volumeAttrs struct {
	Attrs
	HasOrigin bool
	Origin    uint64
}

// CheckName refuses a name a volume may not take: empty, too long, or
// holding spaces or control characters (it is shown in columns).
func CheckName(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("volume name of %d bytes: the most is %d: %w", len(name), MaxNameLen, syscall.EINVAL)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("volume name %q: no spaces or control characters: %w", name, syscall.EINVAL)
		}
	}
	return nil
}

func (a volumeAttrs) encode() []byte {
	b := make([]byte, attrsSize)
	var flags uint64
	if a.ReadOnly {
		flags |= attrReadOnly
	}
	if a.HasOrigin {
		flags |= attrHasOrigin
	}
	binary.LittleEndian.PutUint64(b[0:], flags)
	binary.LittleEndian.PutUint64(b[8:], a.Origin)
	b[16] = byte(len(a.Name))
	copy(b[17:], a.Name)
	return b
}

// DecodeAttrs parses an attribute-tree value (for the checker).
func DecodeAttrs(b []byte) error {
	_, err := decodeAttrs(b)
	return err
}

func decodeAttrs(b []byte) (volumeAttrs, error) {
	if len(b) != attrsSize {
		return volumeAttrs{}, fmt.Errorf("volume attributes of %d bytes, want %d", len(b), attrsSize)
	}
	flags := binary.LittleEndian.Uint64(b[0:])
	if flags&^uint64(attrReadOnly|attrHasOrigin) != 0 {
		return volumeAttrs{}, fmt.Errorf("volume attributes: unknown flags %#x", flags)
	}
	n := int(b[16])
	if n > MaxNameLen {
		return volumeAttrs{}, fmt.Errorf("volume attributes: name of %d bytes", n)
	}
	return volumeAttrs{Attrs: Attrs{Name: string(b[17 : 17+n]), ReadOnly: flags&attrReadOnly != 0},
		HasOrigin: flags&attrHasOrigin != 0, Origin: binary.LittleEndian.Uint64(b[8:])}, nil
}

// attrsLocked returns volume id's attributes; found is false for a
// volume without any.
func (p *Pool) attrsLocked(id uint64) (a volumeAttrs, found bool, err error) {
	if p.sb.AttrsRoot == 0 {
		return volumeAttrs{}, false, nil
	}
	v, found, err := p.attrs.Lookup(p.sb.AttrsRoot, id)
	if err != nil || !found {
		return volumeAttrs{}, false, err
	}
	a, err = decodeAttrs(v)
	return a, err == nil, err
}

// saveAttrsLocked records volume id's attributes, making the tree on
// first use.
func (p *Pool) saveAttrsLocked(id uint64, a volumeAttrs) error {
	if p.sb.AttrsRoot == 0 {
		root, err := p.attrs.Empty()
		if err != nil {
			return err
		}
		p.sb.AttrsRoot = root
	}
	root, _, err := p.attrs.Insert(p.sb.AttrsRoot, id, a.encode())
	if err != nil {
		return err
	}
	p.sb.AttrsRoot = root
	p.dirty = true
	return nil
}

// removeAttrsLocked drops volume id's attributes, if any.
func (p *Pool) removeAttrsLocked(id uint64) error {
	if p.sb.AttrsRoot == 0 {
		return nil
	}
	root, _, _, err := p.attrs.Remove(p.sb.AttrsRoot, id)
	if err != nil {
		return err
	}
	p.sb.AttrsRoot = root
	return nil
}

// visitAttrs reports the attribute tree's nodes (see visitMetadata).
func (p *Pool) visitAttrs(visit func(b uint64) (bool, error)) error {
	if p.sb.AttrsRoot == 0 {
		return nil
	}
	return p.attrs.VisitNodes(p.sb.AttrsRoot, visit, nil)
}

// ExportReadOnly says whether volume v is served read-only: when it was
// made read-only, and, for a snapshot made before volumes had
// attributes, unless legacyWritableSnapshots (the deprecated
// --writable-snapshots: snapshots were then read-only by default).
func (v VolumeBrief) ExportReadOnly(legacyWritableSnapshots bool) bool {
	if v.HasAttrs {
		return v.ReadOnly
	}
	return v.Snapshot && !legacyWritableSnapshots
}

// AttrChange is a change to a volume's attributes; nil fields stay.
type AttrChange struct {
	Name     *string
	ReadOnly *bool
}

// SetAttrs changes volume id's attributes (a layer is marked read-only
// once written, as Docker does with an image layer).
func (p *Pool) SetAttrs(id uint64, c AttrChange) error {
	if c.Name != nil {
		if err := CheckName(*c.Name); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	d, err := p.detailsLocked(id)
	if err != nil {
		return err
	}
	a, found, err := p.attrsLocked(id)
	if err != nil {
		return err
	}
	if !found && d.Flags&FlagSnapshot != 0 {
		// A snapshot made before attributes was read-only by default;
		// it stays so unless the change says otherwise.
		a.ReadOnly = true
	}
	if c.Name != nil {
		a.Name = *c.Name
	}
	if c.ReadOnly != nil {
		a.ReadOnly = *c.ReadOnly
	}
	return p.saveAttrsLocked(id, a)
}
