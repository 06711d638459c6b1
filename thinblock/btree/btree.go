// Package btree is a copy-on-write B-tree of uint64 keys and fixed-size
// values stored in metadata blocks, after Rodeh's "B-trees, Shadowing,
// and Clones": nodes are reference counted and shared between trees, a
// change shadows the path from the root, and shadowing a shared node adds
// a reference to everything it points to. Cloning a tree is one
// reference count increment. An insert whose whole path the transaction
// already owns changes the nodes in place instead (inplace.go).
//
// Nodes are never merged after removals (a removal drops empty nodes and
// collapses a root with one child); the tree stays balanced in depth.
package btree

import (
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// ValueRefs tells a tree what its leaf values reference, so that sharing
// and dropping leaves keeps those references counted. Nil means values
// reference nothing.
type ValueRefs interface {
	IncValue(v []byte) error
	DecValue(v []byte) error
}

// Tree is the shape of one kind of tree; its roots are block numbers.
type Tree struct {
	tm        *txn.Manager
	valueSize int
	refs      ValueRefs
}

// New describes trees with values of valueSize bytes in tm.
func New(tm *txn.Manager, valueSize int, refs ValueRefs) *Tree {
	return &Tree{tm: tm, valueSize: valueSize, refs: refs}
}

func (t *Tree) capacityOf(n *node) int {
	if n.leaf {
		return capacity(t.valueSize)
	}
	return capacity(8)
}

// view returns node b's encoded block, its checksum checked once per
// cache load.
func (t *Tree) view(b uint64) ([]byte, error) {
	return t.tm.View(b, func(buf []byte) error { return checkNode(b, buf) })
}

func (t *Tree) read(b uint64) (*node, error) {
	buf, err := t.view(b)
	if err != nil {
		return nil, err
	}
	return parseNode(b, buf, t.valueSize)
}

func (t *Tree) write(n *node) error {
	buf := make([]byte, blockdev.BlockSize)
	vs := t.valueSize
	if !n.leaf {
		vs = 8
	}
	n.encode(buf, vs)
	return t.tm.Write(n.nr, buf)
}

// shadow makes node b writable: a fresh copy, with references added to
// what it points to when it was shared.
func (t *Tree) shadow(b uint64) (*node, error) {
	nb, buf, shared, err := t.tm.Shadow(b, func(buf []byte) error { return checkNode(b, buf) })
	if err != nil {
		return nil, err
	}
	n, err := parseNode(b, buf, t.valueSize)
	if err != nil {
		return nil, err
	}
	n.nr = nb
	if shared {
		for i := range n.keys {
			if n.leaf {
				if t.refs != nil {
					if err := t.refs.IncValue(n.vals[i]); err != nil {
						return nil, err
					}
				}
			} else {
				t.tm.Inc(n.child(i))
			}
		}
	}
	return n, nil
}

// Empty makes a new empty tree and returns its root.
func (t *Tree) Empty() (uint64, error) {
	b, err := t.tm.Alloc()
	if err != nil {
		return 0, err
	}
	return b, t.write(&node{nr: b, leaf: true})
}

// Clone adds a reference to the tree at root: the copy-on-write clone.
func (t *Tree) Clone(root uint64) { t.tm.Inc(root) }

// Lookup finds key, reading the path's blocks in place.
func (t *Tree) Lookup(root, key uint64) ([]byte, bool, error) {
	b := root
	for depth := 0; ; depth++ {
		if depth > 64 {
			return nil, false, fmt.Errorf("btree lookup from %d: deeper than 64 levels (a cycle?)", root)
		}
		buf, err := t.view(b)
		if err != nil {
			return nil, false, err
		}
		leaf, count, vs, err := header(b, buf, t.valueSize)
		if err != nil {
			return nil, false, err
		}
		i := searchRaw(buf, count, key)
		if i < 0 {
			return nil, false, nil
		}
		off := headerSize + 8*capacity(vs) + vs*i
		if leaf {
			if binary.LittleEndian.Uint64(buf[headerSize+8*i:]) != key {
				return nil, false, nil
			}
			return append([]byte(nil), buf[off:off+vs]...), true, nil
		}
		b = binary.LittleEndian.Uint64(buf[off:])
	}
}

// PathShared reports whether some node on the path to key is shared
// with another tree. When none is, the counts of what the leaf points to
// are exact without shadowing anything.
func (t *Tree) PathShared(root, key uint64) (bool, error) {
	b := root
	for depth := 0; ; depth++ {
		if depth > 64 {
			return false, fmt.Errorf("btree path from %d: deeper than 64 levels (a cycle?)", root)
		}
		if t.tm.Ref(b) > 1 {
			return true, nil
		}
		buf, err := t.view(b)
		if err != nil {
			return false, err
		}
		leaf, count, vs, err := header(b, buf, t.valueSize)
		if err != nil || leaf || count == 0 {
			return false, err
		}
		i := max(searchRaw(buf, count, key), 0)
		b = binary.LittleEndian.Uint64(buf[headerSize+8*capacity(vs)+vs*i:])
	}
}

// Insert sets key to value and returns the new root and the value it
// replaced, if any (whose references the caller then drops).
func (t *Tree) Insert(root, key uint64, value []byte) (uint64, []byte, error) {
	if len(value) != t.valueSize {
		return 0, nil, fmt.Errorf("btree insert: value of %d bytes, want %d", len(value), t.valueSize)
	}
	if done, old, err := t.insertInPlace(root, key, value); done || err != nil {
		return root, old, err
	}
	n, right, old, err := t.insert(root, key, value)
	if err != nil {
		return 0, nil, err
	}
	if right == nil {
		return n.nr, old, nil
	}
	b, err := t.tm.Alloc()
	if err != nil {
		return 0, nil, err
	}
	top := &node{nr: b, keys: []uint64{n.keys[0], right.keys[0]}, vals: [][]byte{childValue(n.nr), childValue(right.nr)}}
	return b, old, t.write(top)
}

// insert puts key into the subtree at b; it returns the shadowed node
// and, when it had to split, the new right sibling.
func (t *Tree) insert(b, key uint64, value []byte) (n, right *node, old []byte, err error) {
	n, err = t.shadow(b)
	if err != nil {
		return nil, nil, nil, err
	}
	i := sort.Search(len(n.keys), func(i int) bool { return n.keys[i] >= key })
	if n.leaf {
		if i < len(n.keys) && n.keys[i] == key {
			old = n.vals[i]
			n.vals[i] = append([]byte(nil), value...)
		} else {
			n.keys = insertAt(n.keys, i, key)
			n.vals = insertAt(n.vals, i, append([]byte(nil), value...))
		}
	} else {
		// The child whose range holds key: the last with keys[c] <= key.
		c := i
		if c == len(n.keys) || n.keys[c] != key {
			c--
		}
		if c < 0 {
			c = 0
			n.keys[0] = key
		}
		child, split, o, err := t.insert(n.child(c), key, value)
		if err != nil {
			return nil, nil, nil, err
		}
		old = o
		n.vals[c] = childValue(child.nr)
		if split != nil {
			n.keys = insertAt(n.keys, c+1, split.keys[0])
			n.vals = insertAt(n.vals, c+1, childValue(split.nr))
		}
	}
	if len(n.keys) > t.capacityOf(n) {
		if right, err = t.split(n); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := t.write(n); err != nil {
		return nil, nil, nil, err
	}
	return n, right, old, nil
}

// split moves the upper half of n into a new sibling.
func (t *Tree) split(n *node) (*node, error) {
	b, err := t.tm.Alloc()
	if err != nil {
		return nil, err
	}
	half := len(n.keys) / 2
	right := &node{nr: b, leaf: n.leaf,
		keys: append([]uint64(nil), n.keys[half:]...), vals: append([][]byte(nil), n.vals[half:]...)}
	n.keys, n.vals = n.keys[:half:half], n.vals[:half:half]
	return right, t.write(right)
}

func insertAt[T any](s []T, i int, v T) []T {
	s = append(s, v)
	copy(s[i+1:], s[i:])
	s[i] = v
	return s
}

// Remove deletes key and returns the new root and the removed value.
func (t *Tree) Remove(root, key uint64) (uint64, []byte, bool, error) {
	if _, found, err := t.Lookup(root, key); err != nil || !found {
		return root, nil, false, err
	}
	n, old, err := t.remove(root, key)
	if err != nil {
		return 0, nil, false, err
	}
	// Collapse a root left with one child, keeping the tree shallow: the
	// child inherits the root's reference to it.
	for !n.leaf && len(n.keys) == 1 {
		child := n.child(0)
		last, err := t.tm.Dec(n.nr)
		if err != nil {
			return 0, nil, false, err
		}
		if !last {
			// n lives on in another tree, keeping its reference.
			t.tm.Inc(child)
		}
		if n, err = t.read(child); err != nil {
			return 0, nil, false, err
		}
	}
	if !n.leaf && len(n.keys) == 0 {
		n.leaf = true
		if err := t.write(n); err != nil {
			return 0, nil, false, err
		}
	}
	return n.nr, old, true, nil
}

// remove deletes key (known present) from the subtree at b, dropping
// children that become empty.
func (t *Tree) remove(b, key uint64) (*node, []byte, error) {
	n, err := t.shadow(b)
	if err != nil {
		return nil, nil, err
	}
	i := sort.Search(len(n.keys), func(i int) bool { return n.keys[i] > key }) - 1
	var old []byte
	if n.leaf {
		old = n.vals[i]
		n.keys = append(n.keys[:i], n.keys[i+1:]...)
		n.vals = append(n.vals[:i], n.vals[i+1:]...)
	} else {
		child, o, err := t.remove(n.child(i), key)
		if err != nil {
			return nil, nil, err
		}
		old = o
		if len(child.keys) == 0 {
			if err := t.Delete(child.nr); err != nil {
				return nil, nil, err
			}
			n.keys = append(n.keys[:i], n.keys[i+1:]...)
			n.vals = append(n.vals[:i], n.vals[i+1:]...)
		} else {
			n.vals[i] = childValue(child.nr)
			n.keys[i] = child.keys[0]
		}
	}
	return n, old, t.write(n)
}

// Delete drops one reference to the tree at root; the nodes (and leaf
// values) no other tree shares are freed.
func (t *Tree) Delete(root uint64) error {
	n, err := t.read(root)
	if err != nil {
		return err
	}
	last, err := t.tm.Dec(root)
	if err != nil || !last {
		return err
	}
	for i := range n.keys {
		if n.leaf {
			if t.refs != nil {
				if err := t.refs.DecValue(n.vals[i]); err != nil {
					return err
				}
			}
		} else if err := t.Delete(n.child(i)); err != nil {
			return err
		}
	}
	return nil
}

// Walk calls fn for every entry with key in [from, to), in key order;
// fn returning false stops the walk.
func (t *Tree) Walk(root, from, to uint64, fn func(key uint64, value []byte) (bool, error)) error {
	_, err := t.walk(root, from, to, fn)
	return err
}

func (t *Tree) walk(b, from, to uint64, fn func(uint64, []byte) (bool, error)) (bool, error) {
	n, err := t.read(b)
	if err != nil {
		return false, err
	}
	for i, k := range n.keys {
		if k >= to {
			return false, nil
		}
		if n.leaf {
			if k < from {
				continue
			}
			if more, err := fn(k, n.vals[i]); err != nil || !more {
				return false, err
			}
			continue
		}
		if i+1 < len(n.keys) && n.keys[i+1] <= from {
			continue
		}
		if more, err := t.walk(n.child(i), from, to, fn); err != nil || !more {
			return false, err
		}
	}
	return true, nil
}

// VisitNodes walks the blocks of the tree at root for a reference
// recount: visit is called for each reference to a node and says whether
// it was the node's first; shared subtrees are entered once. Leaves are
// read only when leaf is non-nil, which then sees every leaf value;
// otherwise only internal nodes are read (all leaves sit at one depth,
// found down the leftmost path), so a recount costs about one read per
// 250 leaves.
func (t *Tree) VisitNodes(root uint64, visit func(b uint64) (bool, error), leaf func(key uint64, v []byte) error) error {
	leafDepth := -1
	if leaf == nil {
		d, err := t.depth(root)
		if err != nil {
			return err
		}
		leafDepth = d
	}
	return t.visitNodes(root, 0, leafDepth, visit, leaf)
}

// depth is the depth of the tree's leaves (0 for a root leaf).
func (t *Tree) depth(root uint64) (int, error) {
	b := root
	for d := 0; d <= 64; d++ {
		n, err := t.read(b)
		if err != nil {
			return 0, err
		}
		if n.leaf || len(n.keys) == 0 {
			return d, nil
		}
		b = n.child(0)
	}
	return 0, fmt.Errorf("btree %d: deeper than 64 levels (a cycle?)", root)
}

func (t *Tree) visitNodes(b uint64, depth, leafDepth int, visit func(b uint64) (bool, error), leaf func(uint64, []byte) error) error {
	first, err := visit(b)
	if err != nil || !first || depth == leafDepth {
		return err
	}
	n, err := t.read(b)
	if err != nil {
		return err
	}
	for i := range n.keys {
		switch {
		case !n.leaf:
			if err := t.visitNodes(n.child(i), depth+1, leafDepth, visit, leaf); err != nil {
				return err
			}
		case leaf != nil:
			if err := leaf(n.keys[i], n.vals[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// WalkSharing calls fn for every entry of the tree at root, saying
// whether some node on its path is shared with another tree.
func (t *Tree) WalkSharing(root uint64, fn func(key uint64, v []byte, sharedPath bool) error) error {
	return t.walkSharing(root, false, fn)
}

func (t *Tree) walkSharing(b uint64, shared bool, fn func(uint64, []byte, bool) error) error {
	n, err := t.read(b)
	if err != nil {
		return err
	}
	shared = shared || t.tm.Ref(b) > 1
	for i, k := range n.keys {
		if n.leaf {
			if err := fn(k, n.vals[i], shared); err != nil {
				return err
			}
		} else if err := t.walkSharing(n.child(i), shared, fn); err != nil {
			return err
		}
	}
	return nil
}
