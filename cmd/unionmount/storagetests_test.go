package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
)

// storageTests are containers/storage's bats tests of layers with id
// mappings, which skip themselves when a mount program is configured.
const storageTests = "^(idmaps-|delete-layer-with-mappings$)"

// TestContainersStorageIDMapTests runs containers/storage's idmaps-* and
// delete-layer-with-mappings bats tests with the overlay driver on kernel
// overlay, with fuse-overlayfs as mount_program and with unionmount as
// mount_program (their skip when a mount program is set taken out, in a
// temporary copy), and compares the pass counts: unionmount must pass
// every test kernel overlay passes, so at least as many as fuse-overlayfs.
//
// It needs bats, and a copy of containers/storage named by
// $CONTAINERS_STORAGE_REPO (a git dir or a checkout: the tests come from
// it, and its containers-storage command is built from it, from its
// vendor dir, unless $CONTAINERS_STORAGE_BIN names one). A clean checkout
// has neither, so there the test says why it does not run. About 40 s to
// build and 25 s per target.
func TestContainersStorageIDMapTests(t *testing.T) {
	fstest.RequireRoot(t)
	fstest.RequireFUSE(t)
	fstest.RequireKernelOverlay(t)
	if _, err := exec.LookPath("bats"); err != nil {
		t.Skip("bats is not installed (Debian package bats)")
	}
	repo := os.Getenv("CONTAINERS_STORAGE_REPO")
	if repo == "" {
		t.Skip("set CONTAINERS_STORAGE_REPO to a copy (git dir or checkout) of github.com/containers/storage to run its id mapping tests")
	}
	tree := t.TempDir()
	extractTree(t, repo, tree)
	bin := os.Getenv("CONTAINERS_STORAGE_BIN")
	if bin == "" {
		bin = filepath.Join(tree, "containers-storage")
		build := exec.Command("go", "build", "-mod=vendor", "-tags", "exclude_graphdriver_btrfs containers_image_openpgp",
			"-o", bin, "./cmd/containers-storage")
		build.Dir = tree
		build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
		if out, err := build.CombinedOutput(); err != nil {
			t.Skipf("cannot build containers-storage from %s: %v\n%s", repo, err, tail(out, 2000))
		}
	}
	tests := filepath.Join(tree, "tests")
	for _, f := range []string{"idmaps.bats", "delete-layer.bats"} {
		p := filepath.Join(tests, f)
		data, err := os.ReadFile(p)
		require.NoError(t, err, "containers/storage tests")
		patched := bytes.ReplaceAll(data, []byte(`skip "test not supported when using mount_program"`), []byte(": run with a mount program here"))
		require.NotEqual(t, data, patched, "%s: no skip for mount programs found to take out", f)
		require.NoError(t, os.WriteFile(p, patched, 0o644))
	}

	targets := []struct{ name, option string }{
		{"kernel overlay", ""},
		{"fuse-overlayfs", "overlay.mount_program=fuse-overlayfs"},
		{"unionmount", "overlay.mount_program=" + binary(t)},
	}
	passed := map[string]map[string]bool{}
	for _, tg := range targets {
		if prog, ok := strings.CutPrefix(tg.option, "overlay.mount_program="); ok {
			p, err := exec.LookPath(prog)
			if err != nil {
				t.Logf("%s: not installed, not run", tg.name)
				continue
			}
			tg.option = "overlay.mount_program=" + p
		}
		cmd := exec.Command("bats", "--tap", "-f", storageTests, "idmaps.bats", "delete-layer.bats")
		cmd.Dir = tests
		cmd.Env = append(os.Environ(), "STORAGE_BINARY="+bin, "STORAGE_DRIVER=overlay", "STORAGE_OPTION="+tg.option,
			"TMPDIR="+t.TempDir())
		out, _ := cmd.CombinedOutput() // bats fails when a test fails: the TAP lines say which
		passed[tg.name] = tapResults(out)
		var failed []string
		n := 0
		for name, ok := range passed[tg.name] {
			if ok {
				n++
			} else {
				failed = append(failed, name)
			}
		}
		t.Logf("%s: %d of %d passed; failed: %v", tg.name, n, len(passed[tg.name]), failed)
		if tg.name == "unionmount" && len(failed) > 0 {
			t.Logf("unionmount's bats output:\n%s", tail(out, 6000))
		}
	}
	kernel, union := passed["kernel overlay"], passed["unionmount"]
	require.NotEmpty(t, kernel, "no test ran on kernel overlay (the filter %s matched none?)", storageTests)
	require.Equal(t, len(kernel), len(union), "unionmount ran other tests than kernel overlay")
	for name, ok := range kernel {
		if ok {
			assert.True(t, union[name], "%s passes on kernel overlay but not on unionmount", name)
		}
	}
	if fo, ok := passed["fuse-overlayfs"]; ok {
		assert.GreaterOrEqual(t, count(union), count(fo), "unionmount passes fewer than fuse-overlayfs")
	}
}

// extractTree puts the files of containers/storage's repo (a git dir or
// a checkout) in dst.
func extractTree(t *testing.T, repo, dst string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(repo, "tests", "idmaps.bats")); err == nil {
		require.NoError(t, os.CopyFS(dst, os.DirFS(repo)))
		return
	}
	archive := exec.Command("sh", "-c", `git --git-dir="$1" archive HEAD | tar -x -C "$2"`, "sh", repo, dst)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Skipf("%s is neither a checkout nor a git dir of containers/storage: %v\n%s", repo, err, out)
	}
}

var tapLine = regexp.MustCompile(`(?m)^(ok|not ok) \d+ (\S+)`)

// tapResults maps each test a bats TAP report names to whether it passed.
func tapResults(out []byte) map[string]bool {
	res := map[string]bool{}
	for _, m := range tapLine.FindAllSubmatch(out, -1) {
		res[string(m[2])] = string(m[1]) == "ok"
	}
	return res
}

func count(res map[string]bool) int {
	n := 0
	for _, ok := range res {
		if ok {
			n++
		}
	}
	return n
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return fmt.Sprintf("%s", b)
}
