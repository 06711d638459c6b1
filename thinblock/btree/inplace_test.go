package btree_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/btree"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// treeSlots is how many trees a run keeps; their roots live in the three
// root fields of the superblock, which txn stores without reading them.
const treeSlots = 3

var errCrash = errors.New("simulated crash")

// forest is a few trees in one metadata device, beside a model of what
// each must read as now and at the last commit.
type forest struct {
	rt          *rapid.T
	dev         *blockdev.Mem
	tm          *txn.Manager
	tree        *btree.Tree
	valueSize   int
	cacheBlocks int
	roots       [treeSlots]uint64
	now         [treeSlots]map[uint64][]byte
	committed   [treeSlots]map[uint64][]byte
	txnID       uint64 // the committed transaction
}

func cloneModel(m map[uint64][]byte) map[uint64][]byte {
	c := make(map[uint64][]byte, len(m))
	for k, v := range m {
		c[k] = v // values are never changed, only replaced
	}
	return c
}

func (f *forest) superblock() txn.Superblock {
	return txn.Superblock{DataBlockSize: 65536, DataBlocks: 16,
		DevicesRoot: f.roots[0], DataSMRoot: f.roots[1], AttrsRoot: f.roots[2]}
}

func rootsOf(sb txn.Superblock) [treeSlots]uint64 {
	return [treeSlots]uint64{sb.DevicesRoot, sb.DataSMRoot, sb.AttrsRoot}
}

func newForest(rt *rapid.T) *forest {
	f := &forest{rt: rt, dev: blockdev.NewMem(),
		valueSize:   rapid.SampledFrom([]int{8, 600}).Draw(rt, "valueSize"),
		cacheBlocks: rapid.SampledFrom([]int{16, 1024}).Draw(rt, "cacheBlocks")}
	if err := txn.Format(f.dev, txn.Superblock{DataBlockSize: 65536, DataBlocks: 16}); err != nil {
		rt.Fatal(err)
	}
	f.open()
	for i := range f.roots {
		root, err := f.tree.Empty()
		if err != nil {
			rt.Fatal(err)
		}
		f.roots[i], f.now[i] = root, map[uint64][]byte{}
	}
	f.commit()
	return f
}

// open loads the committed state from the device, rebuilding reference
// counts by walking the trees, as a pool does.
func (f *forest) open() {
	tm, err := txn.Open(f.dev, f.cacheBlocks)
	if err != nil {
		f.rt.Fatalf("open: %v", err)
	}
	tree := btree.New(tm, f.valueSize, nil)
	roots := rootsOf(tm.Superblock())
	err = tm.RebuildRefs(func(visit func(uint64) (bool, error)) error {
		for _, root := range roots {
			if root == 0 {
				continue
			}
			if err := tree.VisitNodes(root, visit, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.rt.Fatalf("rebuild reference counts: %v", err)
	}
	f.tm, f.tree, f.roots, f.txnID = tm, tree, roots, tm.Superblock().TxnID
}

func (f *forest) commit() {
	if err := f.tm.Commit(f.superblock()); err != nil {
		f.rt.Fatalf("commit: %v", err)
	}
	f.txnID = f.tm.Superblock().TxnID
	for i := range f.now {
		f.committed[i] = cloneModel(f.now[i])
	}
}

func (f *forest) value(seed uint64) []byte {
	v := make([]byte, f.valueSize)
	for i := 0; i < len(v); i += 8 {
		binary.LittleEndian.PutUint64(v[i:], seed*0x9e3779b97f4a7c15+uint64(i))
	}
	return v
}

func (f *forest) insert(slot int, key uint64, v []byte) {
	root, old, err := f.tree.Insert(f.roots[slot], key, v)
	if err != nil {
		f.rt.Fatalf("insert %d into tree %d: %v", key, slot, err)
	}
	if want, had := f.now[slot][key]; had != (old != nil) || (had && !bytes.Equal(old, want)) {
		f.rt.Fatalf("insert %d into tree %d replaced %x, want %x", key, slot, old, want)
	}
	f.roots[slot] = root
	f.now[slot][key] = v
}

// check compares every tree, whole and by lookups, with its model.
func (f *forest) check(when string) {
	for slot, root := range f.roots {
		want := f.now[slot]
		var got []uint64
		err := f.tree.Walk(root, 0, ^uint64(0), func(k uint64, v []byte) (bool, error) {
			if w, ok := want[k]; !ok || !bytes.Equal(v, w) {
				return false, fmt.Errorf("key %d reads %x…, want %x… (in the model: %v)", k, v[:8], w[:min(8, len(w))], ok)
			}
			got = append(got, k)
			return true, nil
		})
		if err != nil {
			f.rt.Fatalf("%s: tree %d: %v", when, slot, err)
		}
		if len(got) != len(want) {
			f.rt.Fatalf("%s: tree %d holds %d keys, its model %d", when, slot, len(got), len(want))
		}
		if !slices.IsSorted(got) {
			f.rt.Fatalf("%s: tree %d walks out of order", when, slot)
		}
		for k, w := range want {
			v, ok, err := f.tree.Lookup(root, k)
			if err != nil || !ok || !bytes.Equal(v, w) {
				f.rt.Fatalf("%s: tree %d: lookup %d: found %v, err %v", when, slot, k, ok, err)
			}
		}
	}
}

// crash commits and crashes at a crash point (or crashes with no commit
// under way), keeping some or all unsynced pages, then reopens: each
// tree must read as it was at the last commit that completed.
func (f *forest) crash() {
	points := append([]string{"no commit"}, txn.CrashPoints()...)
	point := rapid.SampledFrom(points).Draw(f.rt, "crashPoint")
	seed := rapid.SampledFrom([]int64{-1, 0, 1, 2}).Draw(f.rt, "keepSeed")
	before := f.txnID
	if point != "no commit" {
		f.tm.Crash = func(p string) error {
			if p == point {
				return errCrash
			}
			return nil
		}
		// A commit with nothing to write never reaches the mid-write
		// point: it completes.
		if err := f.tm.Commit(f.superblock()); err != nil && !errors.Is(err, errCrash) {
			f.rt.Fatalf("commit with a crash at %s: %v", point, err)
		}
	}
	// Every unsynced page reaching the disk (seed -1) is the case that
	// exposes a committed node changed in place.
	f.dev.CrashKeeping(func(page int64) bool { return seed < 0 || (page*2654435761+seed)&4 != 0 })
	f.dev = f.dev.Reopen()
	f.open()
	switch f.txnID {
	case before:
		for i := range f.now {
			f.now[i] = cloneModel(f.committed[i])
		}
	case before + 1: // the superblock got out: the commit stands
		for i := range f.now {
			f.committed[i] = cloneModel(f.now[i])
		}
	default:
		f.rt.Fatalf("after a crash at %s: transaction %d, the last committed was %d", point, f.txnID, before)
	}
}

// TestTreesKeepTheirContentAcrossInPlaceChangesClonesAndCrashes drives
// inserts, removes, clones, commits and crashes on several trees against
// a model of each. Inserts into nodes the transaction already owns change
// them in place, so this fails if a committed node or one a clone shares
// is ever changed in place: a clone would see its origin's change, or the
// committed state would read differently after a crash.
func TestTreesKeepTheirContentAcrossInPlaceChangesClonesAndCrashes(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		f := newForest(rt)
		keys := rapid.Uint64Range(0, 3000)
		steps := rapid.IntRange(1, 40).Draw(rt, "steps")
		for step := 0; step < steps; step++ {
			slot := rapid.IntRange(0, treeSlots-1).Draw(rt, "slot")
			op := rapid.SampledFrom([]string{"insert", "insert", "insertRun", "insertRun", "remove", "removeRun",
				"clone", "clone", "commit", "crash"}).Draw(rt, "op")
			switch op {
			case "insert":
				k := keys.Draw(rt, "key")
				f.insert(slot, k, f.value(uint64(step)<<32|k))
			case "insertRun":
				// Runs grow trees past one level and make splits.
				start, n := keys.Draw(rt, "start"), rapid.IntRange(1, 400).Draw(rt, "n")
				stride := rapid.Uint64Range(1, 3).Draw(rt, "stride")
				for i := 0; i < n; i++ {
					k := start + uint64(i)*stride
					f.insert(slot, k, f.value(uint64(step)<<32|k))
				}
			case "remove", "removeRun":
				start, n := keys.Draw(rt, "start"), 1
				if op == "removeRun" {
					n = rapid.IntRange(1, 300).Draw(rt, "n")
				}
				for k := start; k < start+uint64(n); k++ {
					root, old, found, err := f.tree.Remove(f.roots[slot], k)
					want, had := f.now[slot][k]
					if err != nil || found != had || (had && !bytes.Equal(old, want)) {
						rt.Fatalf("remove %d from tree %d: found %v (model %v), err %v", k, slot, found, had, err)
					}
					f.roots[slot] = root
					delete(f.now[slot], k)
				}
			case "clone":
				// A snapshot: the other tree becomes a clone of this one.
				dst := rapid.IntRange(0, treeSlots-1).Draw(rt, "dst")
				if dst == slot {
					continue
				}
				f.tree.Clone(f.roots[slot])
				if err := f.tree.Delete(f.roots[dst]); err != nil {
					rt.Fatalf("delete tree %d: %v", dst, err)
				}
				f.roots[dst] = f.roots[slot]
				f.now[dst] = cloneModel(f.now[slot])
			case "commit":
				f.commit()
				// What was committed reads back from the device alone.
				saved := *f
				f.dev = f.dev.Reopen()
				f.open()
				f.check(fmt.Sprintf("step %d: reopened after the commit", step))
				*f = saved
			case "crash":
				f.crash()
			}
			f.check(fmt.Sprintf("step %d (%s on tree %d)", step, op, slot))
		}
		// Every reference is accounted for: with all trees gone, only
		// the superblock slots are in use.
		for slot := range f.roots {
			if err := f.tree.Delete(f.roots[slot]); err != nil {
				rt.Fatalf("delete tree %d: %v", slot, err)
			}
		}
		if s := f.tm.Stats(); s.Used != txn.FirstFreeBlock {
			rt.Fatalf("with every tree deleted, %d metadata blocks are still referenced (want the %d superblock slots)", s.Used, txn.FirstFreeBlock)
		}
	})
}
