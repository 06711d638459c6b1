package unionfs_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/pkg/xattr"
	"golang.org/x/sys/unix"
	"pgregory.net/rapid"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// The lower layers both sides of the random comparison start from: two
// layers, so merges, hiding and redirects across layers are exercised.
var randomLowers = []fstest.Spec{
	{"d1/a": "top a", "d1/sub/": "", "b": "top b", "d2/": "", "link": "->d1/a"},
	{"d1/c": "bottom c", "d1/sub/x": "bottom x", "d3/y": "bottom y", "b": "hidden b", "e": "bottom e"},
}

var (
	// Few names, so that operations keep meeting the same objects.
	randomDirs  = []string{"", "d1", "d1/sub", "d3"}
	randomNames = []string{"a", "b", "c", "x", "y", "sub"}
)

// randomStack is a stack of lower layers the random comparison starts
// from, and the paths its operations draw from.
type randomStack struct {
	lowers       []fstest.Spec
	dirs, names  []string
	kinds        []string                            // the operations drawn, opKinds if nil
	prepare      func(t *testing.T, lowers []string) // markers a Spec cannot hold
	remount      bool                                // compare once more after remounting both
	checksFactor int                                 // divides randomChecks
	// index mounts both sides with index=on, and remounts each over
	// the other's layers: each must read the index the other wrote.
	index bool
}

var twoLayers = randomStack{lowers: randomLowers, dirs: randomDirs, names: randomNames, checksFactor: 1,
	prepare: shareWithUser}

// shareWithUser gives user 1000 (see fsOp.asUser) places to work in the
// lower layers: a sticky world-writable directory, a writable one and a
// file of its own.
func shareWithUser(t *testing.T, lowers []string) {
	for _, c := range []struct {
		path string
		mode uint32
	}{{"d2", 0o1777}, {"d3", 0o777}} {
		dir := filepath.Join(lowers[0], c.path)
		if _, err := os.Stat(dir); err != nil {
			dir = filepath.Join(lowers[1], c.path)
		}
		if err := unix.Chmod(dir, c.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Lchown(filepath.Join(lowers[0], "d1/a"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
}

// threeLayers hides parts of the bottom layer in the middle one (an
// opaque directory, a symlink over a directory, a whiteout over one) and
// holds hard links, so that renames of directories (recorded as
// redirects) and copy-ups of links meet them, also after a remount.
var threeLayers = randomStack{
	lowers: []fstest.Spec{
		{"d1/a": "top a", "p/": "", "q/s/": "", "w/s/": "", "hl1": "h", "hl2": fstest.HardLink("hl1")},
		{"d1/c": "mid c", "r/s/": "", "r/c": "mid r c", "q": "->d1", "hm1": "m", "d1/hm2": fstest.HardLink("hm1")},
		{"r/s/b": "hidden b", "r/a": "hidden a", "q/s/x": "hidden x", "w/s/y": "hidden y", "d1/c": "bottom c", "d1/x": "bottom x", "p/s/a": "bottom a"},
	},
	dirs:  []string{"", "d1", "r", "r/s", "p", "q", "q/s", "w", "w/s"},
	names: []string{"a", "b", "c", "s", "x", "y", "q", "r", "w", "hl1", "hm1", "hm2"},
	// Renames and links more often than the rest: they make the
	// redirects and the broken links.
	kinds: append(append([]string{}, opKinds...), "rename", "rename", "rename", "link"),
	prepare: func(t *testing.T, lowers []string) {
		prefix := "trusted."
		if fstest.InUserNamespace() {
			prefix = "user." // kernel overlay reads only these there (userxattr)
		}
		if err := unix.Setxattr(filepath.Join(lowers[1], "r"), prefix+"overlay.opaque", []byte("y"), 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(filepath.Join(lowers[1], "w"), unix.S_IFCHR|0o600, 0); err != nil {
			t.Fatal(err)
		}
	},
	remount:      true,
	checksFactor: 3,
}

// threeLayersIndexed is threeLayers with kernel overlay's index on: the
// copy-ups of its lower hard links keep each link group one file.
var threeLayersIndexed = func() randomStack {
	s := threeLayers
	s.index = true
	s.checksFactor = 6
	return s
}()

// opKinds are the operations drawOp draws from, each as likely.
var opKinds = []string{
	"create", "write", "truncate", "chmod", "link", "symlink", "rename",
	"unlink", "mkdir", "rmdir", "setxattr", "removexattr", "open",
	"chown", "mkfifo", "exchange", "rename-noreplace",
}

// owners are the owners "chown" gives.
var owners = [][2]int{{0, 0}, {1000, 1000}, {1000, 0}, {65534, 65534}}

// openFlags are the open flag sets the "open" operation draws from: each
// access mode with and without truncation, appending and creation (the
// kernel passes some to the daemon in OPEN and acts on others itself).
var openFlags = []int{
	unix.O_RDONLY, unix.O_WRONLY, unix.O_RDWR,
	unix.O_RDONLY | unix.O_TRUNC, unix.O_WRONLY | unix.O_TRUNC, unix.O_RDWR | unix.O_TRUNC,
	unix.O_WRONLY | unix.O_APPEND, unix.O_RDWR | unix.O_APPEND | unix.O_TRUNC,
	unix.O_RDONLY | unix.O_CREAT, unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL,
}

// fsOp is one random operation, applied by path to a mount.
type fsOp struct {
	kind  string
	a, b  string
	data  string
	off   int64
	mode  uint32
	flags int    // for "open"
	owner [2]int // for "chown"
	// asUser runs the operation as user 1000 rather than root.
	asUser bool
}

func (o fsOp) String() string {
	who := "root"
	if o.asUser {
		who = "user"
	}
	return fmt.Sprintf("%s(%q %q data=%q off=%d mode=%o flags=%#o owner=%d:%d as %s)", o.kind, o.a, o.b, o.data, o.off, o.mode, o.flags, o.owner[0], o.owner[1], who)
}

func drawPath(t *rapid.T, s *randomStack, label string) string {
	dir := rapid.SampledFrom(s.dirs).Draw(t, label+"dir")
	name := rapid.SampledFrom(s.names).Draw(t, label+"name")
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func drawOp(t *rapid.T, s *randomStack) fsOp {
	kinds := s.kinds
	if kinds == nil {
		kinds = opKinds
	}
	o := fsOp{kind: rapid.SampledFrom(kinds).Draw(t, "kind")}
	o.asUser = rapid.IntRange(0, 3).Draw(t, "who") == 0 // a user's, one in four
	o.a = drawPath(t, s, "a")
	switch o.kind {
	case "link", "rename", "symlink", "exchange", "rename-noreplace":
		o.b = drawPath(t, s, "b")
	}
	switch o.kind {
	case "create", "write", "setxattr", "open":
		o.data = rapid.StringMatching(`[a-z]{0,12}`).Draw(t, "data")
	}
	switch o.kind {
	case "write", "truncate":
		o.off = rapid.Int64Range(0, 40).Draw(t, "off")
	case "chmod", "mkdir":
		o.mode = rapid.SampledFrom([]uint32{0o755, 0o700, 0o644, 0o600, 0o1777, 0o2755}).Draw(t, "mode")
	case "create":
		o.mode = rapid.SampledFrom(createModes).Draw(t, "mode")
	case "open":
		o.flags = rapid.SampledFrom(openFlags).Draw(t, "flags")
		o.mode = rapid.SampledFrom(createModes).Draw(t, "mode")
	case "chown":
		o.owner = rapid.SampledFrom(owners).Draw(t, "owner")
	case "mkfifo":
		o.mode = rapid.SampledFrom([]uint32{0o644, 0o600, 0o2644}).Draw(t, "mode")
	}
	return o
}

// apply runs the operation under root and returns its errno (0 if none):
// as root, or for asUser on a thread of its own whose filesystem ids are
// 1000:1000 (which drops root's file capabilities there), so that the
// kernel's and the union's permission checks meet the same requests.
func (o fsOp) apply(root string) syscall.Errno {
	if !o.asUser {
		return errnoOf(o.run(root))
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		unix.RawSyscall(unix.SYS_SETFSGID, 1000, 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, 1000, 0, 0)
		done <- o.run(root)
	}()
	return errnoOf(<-done)
}

func (o fsOp) run(root string) error {
	a, b := filepath.Join(root, o.a), filepath.Join(root, o.b)
	var err error
	switch o.kind {
	case "create":
		err = writeFile(a, unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC, o.data, 0, o.mode)
	case "write":
		err = writeFile(a, unix.O_WRONLY, o.data, o.off, 0)
	case "truncate":
		err = unix.Truncate(a, o.off)
	case "chmod":
		err = unix.Chmod(a, o.mode)
	case "link":
		err = unix.Link(a, b)
	case "symlink":
		err = unix.Symlink(o.a, b)
	case "rename":
		err = unix.Rename(a, b)
	case "exchange":
		err = unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
	case "rename-noreplace":
		err = unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_NOREPLACE)
	case "chown":
		err = unix.Lchown(a, o.owner[0], o.owner[1])
	case "mkfifo":
		err = unix.Mkfifo(a, o.mode)
	case "unlink":
		err = unix.Unlink(a)
	case "mkdir":
		err = unix.Mkdir(a, o.mode)
	case "rmdir":
		err = unix.Rmdir(a)
	case "setxattr":
		err = xattr.LSet(a, "user.k", []byte(o.data))
	case "removexattr":
		err = xattr.LRemove(a, "user.k")
	case "open":
		// Open, write the data where the descriptor may, close.
		var fd int
		if fd, err = unix.Open(a, o.flags|unix.O_CLOEXEC|unix.O_NONBLOCK, o.mode); err == nil {
			if o.flags&unix.O_ACCMODE != unix.O_RDONLY {
				_, err = unix.Write(fd, []byte(o.data))
			}
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
		}
	}
	return err
}

// namesOneFile says whether o is a rename whose source and target are
// both names of one file under root.
func (o fsOp) namesOneFile(root string) bool {
	if o.kind != "rename" {
		return false
	}
	var sa, sb unix.Stat_t
	if unix.Lstat(filepath.Join(root, o.a), &sa) != nil || unix.Lstat(filepath.Join(root, o.b), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// createModes are the modes new files are made with: set-id bits among
// them, which only the mode a file is made with may give it.
var createModes = []uint32{0o644, 0o600, 0o755, 0o4755, 0o2755, 0o6711}

// Opens do not block: "mkfifo" makes fifos, which an open would wait on
// for the other end (O_NONBLOCK changes nothing for other files).
func writeFile(p string, flags int, data string, off int64, mode uint32) error {
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC|unix.O_NONBLOCK, mode)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Pwrite(fd, []byte(data), off)
	return err
}

// randomChecks is how many random sequences to try: a few dozen in
// `make test`, many more with LONG=1.
func randomChecks() string {
	if os.Getenv("UNIONMOUNT_LONG") != "" {
		return "1000"
	}
	return "300"
}

// TestRandomOperationsMatchKernelOverlay applies the same random
// operations to kernel overlay and to unionmount over identical layers:
// after each step the merged trees and the errors must match, and at the
// end so must the two upper directories. Failures shrink to a short case.
func TestRandomOperationsMatchKernelOverlay(t *testing.T) {
	fstest.RequireKernelOverlay(t)
	fstest.RequireFUSE(t)
	if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == "100" {
		f.Value.Set(randomChecks())
	}
	// In the default format the upper dirs must match the kernel's too;
	// in the others the markers differ by design, so only the merged
	// views are compared.
	for _, format := range []string{"chardev", "xattr", "aufs"} {
		t.Run("whiteout="+format, func(t *testing.T) {
			randomAgainstKernel(t, &twoLayers, format, false)
		})
	}
	// Metadata-only copy-up, on both sides where the kernel has it (not
	// in a user namespace): merged views must not depend on it.
	t.Run("metacopy=on", func(t *testing.T) {
		randomAgainstKernel(t, &twoLayers, "chardev", true)
	})
	// Without passthrough the kernel caches writes (the writeback cache),
	// as it does in a user namespace.
	t.Run("passthrough=off", func(t *testing.T) {
		randomAgainstKernel(t, &twoLayers, "chardev", false, "passthrough=off")
	})
	// In a user namespace renames of lower directories fail with EXDEV
	// on both sides (see kernelOverlayOptions), the rest still counts.
	t.Run("three layers then a remount", func(t *testing.T) {
		randomAgainstKernel(t, &threeLayers, "chardev", false)
	})
	// The index keeps lower hard links whole; after the last step each
	// side is remounted over the layers the other wrote.
	// The index needs trusted xattrs: neither side offers it in a user
	// namespace.
	if !fstest.InUserNamespace() {
		t.Run("index=on three layers then a remount over the other's layers", func(t *testing.T) {
			randomAgainstKernel(t, &threeLayersIndexed, "chardev", false)
		})
	}
}

func randomAgainstKernel(t *testing.T, stack *randomStack, format string, metacopy bool, unionExtra ...string) {
	if f := flag.Lookup("rapid.checks"); f != nil && stack.checksFactor > 1 {
		old := f.Value.String()
		var n int
		fmt.Sscan(old, &n)
		f.Value.Set(fmt.Sprint(max(n/stack.checksFactor, 1)))
		defer f.Value.Set(old)
	}
	rapid.Check(t, func(rt *rapid.T) {
		kernel := fstest.NewLayers(t, len(stack.lowers))
		union := fstest.NewLayers(t, len(stack.lowers))
		for i, spec := range stack.lowers {
			fstest.WriteTree(t, kernel.Lowers[i], spec)
			fstest.WriteTree(t, union.Lowers[i], spec)
		}
		if stack.prepare != nil {
			stack.prepare(t, kernel.Lowers)
			stack.prepare(t, union.Lowers)
		}
		kernelOpts := kernelOverlayOptions()
		unionOpts := append([]string{"whiteout=" + format}, unionExtra...)
		if stack.index {
			kernelOpts = []string{"redirect_dir=on", "metacopy=off", "index=on"}
			unionOpts = append(unionOpts, "index=on")
		}
		if metacopy {
			if !fstest.InUserNamespace() {
				kernelOpts = []string{"redirect_dir=on", "metacopy=on", "index=off"}
			}
			unionOpts = append(unionOpts, "metacopy=on")
		}
		unmountKernel, err := fstest.StartKernelOverlay(kernel, kernelOpts...)
		if err != nil {
			rt.Fatal(err)
		}
		if fstest.InUserNamespace() {
			// As the kernel there: no redirects (see kernelOverlayOptions).
			unionOpts = append(unionOpts, "redirect_dir=nofollow")
		}
		mounted, err := uniontest.Start(union, unionOpts...)
		if err != nil {
			unmountKernel()
			rt.Fatal(err)
		}
		unmounted := false
		defer func() {
			if !unmounted {
				unmountKernel()
				mounted.Unmount()
			}
		}()
		ops := rapid.SliceOfN(rapid.Custom(func(t *rapid.T) fsOp { return drawOp(t, stack) }), 1, 40).Draw(rt, "ops")
		for i, o := range ops {
			sameFile := o.namesOneFile(union.Mount)
			ek, eu := o.apply(kernel.Mount), o.apply(union.Mount)
			if sameFile && ek == syscall.ESTALE && eu == 0 && fstest.InUserNamespace() {
				// rename(2) between two names of one file succeeds and
				// does nothing. Kernel overlay in a user namespace, where
				// it cannot record a copy-up's origin, answers ESTALE
				// instead; nothing changes on either side.
				ek = 0
			}
			if ek != eu {
				rt.Fatalf("step %d %v: kernel overlay says %v, unionmount says %v", i, o, errText(ek), errText(eu))
			}
			compareTrees(rt, fmt.Sprintf("after step %d %v: merged view", i, o), kernel.Mount, union.Mount)
		}
		compareInodes(rt, "after the last step", kernel.Mount, union.Mount)
		merged, err := fstest.TakeSnapshot(kernel.Mount)
		if err != nil {
			rt.Fatal(err)
		}
		unmounted = true
		if err := unmountKernel(); err != nil {
			rt.Fatal(err)
		}
		if err := mounted.Unmount(); err != nil {
			rt.Fatal(err)
		}
		switch {
		case metacopy:
			// Where data waits below differs by design (the kernel keeps
			// linked files metadata-only, which needs its index to survive
			// a remount; this union copies their data): what a remount
			// shows must not.
			remounted, err := uniontest.Start(union, unionOpts...)
			if err != nil {
				rt.Fatal(err)
			}
			got, err := fstest.TakeSnapshot(union.Mount)
			remounted.Unmount()
			if err != nil {
				rt.Fatal(err)
			}
			if d := fstest.Diff(merged, got); len(d) > 0 {
				rt.Fatalf("after a remount the merged view differs from kernel overlay:\n  %s", strings.Join(d, "\n  "))
			}
		case stack.index:
			compareIndexedUppers(rt, kernel, union)
		case format == "chardev":
			compareTrees(rt, "upper dirs", kernel.Upper, union.Upper)
		}
		if stack.remount {
			// Redirects are followed from the layers alone after a
			// remount: the merged views must still match.
			if stack.index {
				// Each reads the layers (and index) the other wrote.
				kernel, union = union, kernel
			}
			unmountKernel, err := fstest.StartKernelOverlay(kernel, kernelOpts...)
			if err != nil {
				rt.Fatal(err)
			}
			remounted, err := uniontest.Start(union, unionOpts...)
			if err != nil {
				unmountKernel()
				rt.Fatal(err)
			}
			defer func() {
				if err := unmountKernel(); err != nil {
					rt.Error(err)
				}
				if err := remounted.Unmount(); err != nil {
					rt.Error(err)
				}
			}()
			compareTrees(rt, "after a remount: merged view", kernel.Mount, union.Mount)
			compareInodes(rt, "after a remount", kernel.Mount, union.Mount)
		}
	})
}

func errText(e syscall.Errno) string {
	if e == 0 {
		return "ok"
	}
	return e.Error()
}

func compareTrees(t *rapid.T, what, want, got string) {
	ws, err := fstest.TakeSnapshot(want)
	if err != nil {
		t.Fatalf("%s: snapshot of kernel overlay: %v", what, err)
	}
	gs, err := fstest.TakeSnapshot(got)
	if err != nil {
		t.Fatalf("%s: snapshot of unionmount: %v", what, err)
	}
	if d := fstest.Diff(ws, gs); len(d) > 0 {
		t.Fatalf("%s differs from kernel overlay:\n  %s", what, strings.Join(d, "\n  "))
	}
}

// compareInodes compares which names of two merged views (kernel
// overlay's at want) share an inode number. Upper dirs differ by design:
// the kernel links its whiteouts to one another.
func compareInodes(t *rapid.T, what, want, got string) {
	if fstest.InUserNamespace() {
		// There the kernel shows the names of one copied-up file with
		// different numbers: the name it copied up keeps the lower
		// number, a new link of it shows the upper file's (kernel
		// 6.18, link of a lower file with one name).
		return
	}
	wl, gl := sharedInodes(t, want), sharedInodes(t, got)
	if wl != gl {
		t.Fatalf("%s: names that share an inode number differ from kernel overlay:\n  kernel overlay: %s\n  unionmount:     %s", what, wl, gl)
	}
}

// sharedInodes lists the groups of non-directories under root that share
// an inode number, each group sorted, as one line.
func sharedInodes(t *rapid.T, root string) string {
	byIno := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		byIno[st.Ino] = append(byIno[st.Ino], rel)
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	var groups []string
	for _, names := range byIno {
		if len(names) > 1 {
			sort.Strings(names)
			groups = append(groups, strings.Join(names, "="))
		}
	}
	sort.Strings(groups)
	return "[" + strings.Join(groups, " ") + "]"
}

// compareIndexedUppers compares the upper and index dirs of two unions
// with index=on. Which name of a link group a copy-up links into the
// upper differs by design: the kernel links the name that was opened,
// unionmount the one last looked up (FUSE names the inode, not the name,
// in an open); so the upper names of index entries are left out of the
// upper dirs' comparison, and the entries are compared by content and
// union link count instead (their names hold lower inode numbers). So do
// the directories with nothing but directories under them, which may have
// been copied up only to hold such a name; the merged views, compared
// after every step, still cover them.
func compareIndexedUppers(t *rapid.T, kernel, union *fstest.Layers) {
	var views [2]fstest.Snapshot
	var entries [2]string
	for i, l := range []*fstest.Layers{kernel, union} {
		s, err := fstest.TakeSnapshot(l.Upper)
		if err != nil {
			t.Fatal(err)
		}
		indexed := map[uint64]bool{}
		dir := filepath.Join(l.Work, "index")
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, e := range ents {
			var st unix.Stat_t
			p := filepath.Join(dir, e.Name())
			if err := unix.Lstat(p, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				continue // the kernel's shared whiteout
			}
			indexed[st.Ino] = true
			data, _ := os.ReadFile(p)
			nlink, _ := xattr.LGet(p, "trusted.overlay.nlink")
			union := int64(st.Nlink)
			var add int64
			if len(nlink) > 1 && nlink[0] == 'U' {
				fmt.Sscanf(string(nlink[1:]), "%d", &add)
			}
			lines = append(lines, fmt.Sprintf("%q nlink=%d", data, union+add))
		}
		sort.Strings(lines)
		entries[i] = strings.Join(lines, "\n")
		for p := range s {
			var st unix.Stat_t
			if unix.Lstat(filepath.Join(l.Upper, p), &st) == nil && indexed[st.Ino] {
				delete(s, p)
			}
		}
		// The directories copied up to hold those names go too: every
		// directory left with nothing under it.
		for p, e := range s {
			if e.Type != "dir" {
				continue
			}
			empty := true
			for q := range s {
				if strings.HasPrefix(q, p+"/") && s[q].Type != "dir" {
					empty = false
					break
				}
			}
			if empty {
				delete(s, p)
			}
		}
		views[i] = s
	}
	if d := fstest.Diff(views[0], views[1]); len(d) > 0 {
		t.Fatalf("upper dirs (names of index entries left out) differ from kernel overlay:\n  %s", strings.Join(d, "\n  "))
	}
	if entries[0] != entries[1] {
		t.Fatalf("index entries differ from kernel overlay:\n  kernel overlay: %s\n  unionmount:     %s", entries[0], entries[1])
	}
}
