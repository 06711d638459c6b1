package unionfs_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"pgregory.net/rapid"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// branchedStack: writable branches on top and in the middle, read-only
// ones between and below, so that copy-ups go to either writable branch,
// creates follow tdp and whiteouts land on both.
var branchedStack = struct {
	branches []fstest.Spec
	modes    []string
	merged   fstest.Spec
	random   randomStack
}{
	branches: []fstest.Spec{
		{"d1/a": "top a", "b": "top b"},
		{"d1/c": "mid c", "d1/sub/": "", "d3/y": "mid y", "e": "mid e"},
		{"d1/x": "low x", "b": "hidden b", "d3/z": "low z", "f": "low f"},
		{"d1/sub/x": "base x", "e": "hidden e", "g": "base g"},
	},
	modes: []string{"rw", "ro", "rw", "ro+wh"},
	merged: fstest.Spec{"d1/a": "top a", "b": "top b", "d1/c": "mid c", "d1/sub/x": "base x", "d3/y": "mid y",
		"e": "mid e", "d1/x": "low x", "d3/z": "low z", "f": "low f", "g": "base g"},
	random: randomStack{dirs: []string{"", "d1", "d1/sub", "d3"}, names: []string{"a", "b", "c", "x", "y", "z", "e", "f", "g", "sub"}},
}

// TestRandomOperationsOnBranchesMatchAPlainDir applies random operations
// to a branched union and to a plain directory holding its merged view:
// the errors and the trees must match after each step, except that a
// rename or link the union answers EXDEV (see branches.go), and a change
// it answers EROFS (no writable branch above the object), is skipped on
// both sides.
func TestRandomOperationsOnBranchesMatchAPlainDir(t *testing.T) {
	fstest.RequireFUSE(t)
	t.Run("rw ro rw ro", func(t *testing.T) { randomOnBranches(t, branchedStack.modes) })
	// The tutorial's shape: a read-only branch on top, where changes to
	// its objects fail with EROFS (skipped on both sides too).
	t.Run("ro rw ro rw", func(t *testing.T) {
		if f := flag.Lookup("rapid.checks"); f != nil {
			old := f.Value.String()
			var n int
			fmt.Sscan(old, &n)
			f.Value.Set(fmt.Sprint(max(n/3, 1))) // slower: most sequences meet EROFS late
			defer f.Value.Set(old)
		}
		randomOnBranches(t, []string{"ro", "rw", "ro", "rw"})
	})
}

func randomOnBranches(t *testing.T, modes []string) {
	rapid.Check(t, func(rt *rapid.T) {
		root := t.TempDir()
		br := "br="
		for i, spec := range branchedStack.branches {
			dir := filepath.Join(root, fmt.Sprintf("b%d", i))
			fstest.WriteTree(t, dir, spec)
			if i > 0 {
				br += ":"
			}
			br += dir + "=" + modes[i]
		}
		plain := filepath.Join(root, "plain")
		fstest.WriteTree(t, plain, branchedStack.merged)
		mnt := filepath.Join(root, "mnt")
		if err := os.Mkdir(mnt, 0o755); err != nil {
			rt.Fatal(err)
		}
		m, err := uniontest.StartAt(mnt, br)
		if err != nil {
			rt.Fatal(err)
		}
		defer func() {
			if err := m.Unmount(); err != nil {
				rt.Error(err)
			}
		}()
		ops := rapid.SliceOfN(rapid.Custom(func(t *rapid.T) fsOp { return drawOp(t, &branchedStack.random) }), 1, 40).Draw(rt, "ops")
		for i, o := range ops {
			eu := o.apply(mnt)
			if eu == syscall.EXDEV && (o.kind == "rename" || o.kind == "link" || o.kind == "exchange" || o.kind == "rename-noreplace") || eu == syscall.EROFS {
				continue
			}
			if ep := o.apply(plain); ep != eu {
				rt.Fatalf("step %d %v: a plain dir says %v, the branched union says %v", i, o, errText(ep), errText(eu))
			}
			compareTrees(rt, fmt.Sprintf("after step %d %v: merged view", i, o), plain, mnt)
		}
	})
}
