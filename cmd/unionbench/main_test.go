package main

import (
	"bytes"
	"encoding/xml"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/bench"
	"github.com/unionmount/unionmount/internal/userns"
)

// ourBinary is $ENV (make test sets it) or a fresh build of pkg.
func ourBinary(t *testing.T, env, pkg string) string {
	t.Helper()
	if b := os.Getenv(env); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	msg, err := exec.Command("go", "build", "-o", out, "github.com/unionmount/unionmount/"+pkg).CombinedOutput()
	require.NoError(t, err, "%s", msg)
	return out
}

// TestQuickRunReportsEveryRow runs the quick harness (the binary: it
// re-runs itself in a user namespace) and checks its output: every row
// has a positive figure or says why not, our own targets never fail, and
// the JSON and chart files are valid.
func TestQuickRunReportsEveryRow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the quick benchmark (about a minute)")
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	// Packages test in parallel: this run leaves the machine's io_uring
	// switch alone (TestTheIOURingTargetServesOverIOURing has it on).
	cmd := exec.Command(ourBinary(t, "UNIONBENCH_BIN", "cmd/unionbench"), "--quick", "--out", out, "--fuse-uring=false",
		"--unionmount", ourBinary(t, "UNIONMOUNT_BIN", "cmd/unionmount"),
		"--thinblock", ourBinary(t, "THINBLOCK_BIN", "cmd/thinblock"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "stderr:\n%s", stderr.String())

	rep, err := bench.ReadJSON(filepath.Join(out, "unionbench.json"))
	require.NoError(t, err)
	cfg := &bench.Config{Quick: true}
	targets := bench.AllTargets()
	workloads := bench.AllWorkloads(cfg)
	rows := map[string]bench.Row{}
	for _, r := range rep.Rows {
		if r.Family == bench.Rootless {
			r.Target += " in a user namespace"
		}
		rows[r.Target+"/"+r.Workload] = r
	}
	// The union workloads again without privilege, where this machine
	// can map ids into a user namespace; unionmount has every figure.
	rootless := userns.Available() == nil
	if rootless {
		for _, name := range bench.RootlessTargets {
			for _, w := range bench.UnionWorkloads() {
				key := name + " in a user namespace/" + w.Name
				r, ok := rows[key]
				if assert.True(t, ok, "row %s missing", key) && (name == "unionmount" || name == "unionmount-uring" && r.Skipped == "") {
					assert.Empty(t, r.Skipped+r.Error, key)
					assert.NotEmpty(t, r.Values, key)
				}
			}
		}
	}
	figures := 0
	for _, tg := range targets {
		for _, w := range workloads {
			if w.Family != tg.Family() {
				continue
			}
			key := tg.Name() + "/" + w.Name
			r, ok := rows[key]
			if !assert.True(t, ok, "row %s missing", key) {
				continue
			}
			switch {
			case r.Skipped != "":
			case r.Error != "":
				assert.False(t, strings.HasPrefix(tg.Name(), "unionmount") || strings.HasPrefix(tg.Name(), "thinblock") || tg.Name() == "podman-unionmount",
					"our own target failed: %s: %s", key, r.Error)
			default:
				figures++
				require.NotEmpty(t, r.Values, key)
				for _, v := range r.Values {
					assert.Greater(t, v, 0.0, key)
				}
				assert.NotEmpty(t, r.Unit, key)
			}
		}
	}
	assert.Greater(t, figures, 10, "most rows have figures")
	// The page-cache row tells sharing from copying: with passthrough
	// the unions read the lower file's own pages (about one copy); the
	// daemon-served mounts keep one each besides the lower's (quick: 3).
	if shared := rows["unionmount-passthrough/pagecache-copies"]; len(shared.Values) > 0 {
		copied := rows["unionmount/pagecache-copies"]
		if assert.NotEmpty(t, copied.Values, "unionmount/pagecache-copies") {
			assert.Less(t, shared.Values[0], 2.0, "copies with passthrough")
			assert.Greater(t, copied.Values[0], 2.5, "copies without passthrough")
		}
	}
	for _, name := range []string{"unionmount", "thinblock", "podman-unionmount"} {
		for _, r := range rep.Rows {
			if r.Target == name && r.Skipped == "" {
				assert.NotEmpty(t, r.Values, "%s/%s has a figure", name, r.Workload)
			}
		}
	}
	md := stdout.String()
	assert.Contains(t, md, "### union (reference: kernel-overlay)")
	assert.Contains(t, md, "### block (reference: raw-file)")
	assert.Contains(t, md, "### container (reference: podman-kernel-overlay)")
	assert.Contains(t, md, "dm-thin: skipped", "a skipped target says why")

	assert.Contains(t, md, "### live-pool (reference: qcow2-live)")
	families := 4
	if rootless {
		assert.Contains(t, md, "### union-userns (reference: fuse-overlayfs)")
		families++
	}
	charts, _ := filepath.Glob(filepath.Join(out, "*.png"))
	assert.Len(t, charts, families)
	for _, c := range charts {
		f, err := os.Open(c)
		require.NoError(t, err)
		img, err := png.Decode(f)
		f.Close()
		require.NoError(t, err, c)
		assert.Greater(t, img.Bounds().Dx(), 200)
	}
	svgs, _ := filepath.Glob(filepath.Join(out, "*.svg"))
	assert.Len(t, svgs, families)
	for _, s := range svgs {
		data, err := os.ReadFile(s)
		require.NoError(t, err)
		dec := xml.NewDecoder(bytes.NewReader(data))
		for {
			if _, err := dec.Token(); err != nil {
				assert.ErrorIs(t, err, io.EOF, "%s is well-formed XML", s)
				break
			}
		}
	}

	// compare: the same run against itself moves nothing.
	var cmp bytes.Buffer
	assert.Equal(t, 0, run([]string{"compare", filepath.Join(out, "unionbench.json"), filepath.Join(out, "unionbench.json")}, &cmp, &stderr))
	assert.Contains(t, cmp.String(), "no figure moved")
}

func TestBadInputStillRunsWhatItCan(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"--quick", "--targets", "no-such-target,plain-dir", "--workloads", "create",
		"--out", t.TempDir()}, &stdout, &stderr)
	assert.Equal(t, 0, code, stderr.String())
	assert.Contains(t, stderr.String(), `unknown target "no-such-target"`)
	assert.Contains(t, stdout.String(), "| create | files/s |")

	assert.Equal(t, 2, run([]string{"--quick", "--targets", "nothing"}, &stdout, &stderr))
	assert.Equal(t, 2, run([]string{"compare", "only-one.json"}, &stdout, &stderr))
	assert.Equal(t, 2, run([]string{"--frobnicate"}, &stdout, &stderr))
}

func TestVersionNamesTheCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"--version"}, &out, &errOut), errOut.String())
	assert.Regexp(t, `^unionbench \S+ .*go1\.\d+`, out.String())
}

// TestQuickLivePoolRows runs the live-pool family alone, quick: every
// row of both targets has a positive figure or says why it has none, and
// none failed; thinblock has every figure, and the space rows show the
// whole volume given back.
func TestQuickLivePoolRows(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the live-pool family of the quick benchmark (about 30 s)")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio not installed (Debian package fio)")
	}
	var names []string
	for _, w := range bench.LivePoolWorkloads() {
		names = append(names, w.Name)
	}
	var targets []string
	for _, tg := range bench.LivePoolTargets() {
		targets = append(targets, tg.Name())
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(ourBinary(t, "UNIONBENCH_BIN", "cmd/unionbench"), "--quick", "--out", out,
		"--thinblock", ourBinary(t, "THINBLOCK_BIN", "cmd/thinblock"),
		"--targets", strings.Join(targets, ","), "--workloads", strings.Join(names, ","))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "stderr:\n%s", stderr.String())

	rep, err := bench.ReadJSON(filepath.Join(out, "unionbench.json"))
	require.NoError(t, err)
	rows := map[string]bench.Row{}
	for _, r := range rep.Rows {
		require.Equal(t, bench.LivePool, r.Family, "only the family asked for ran")
		rows[r.Target+"/"+r.Workload] = r
	}
	for _, tg := range targets {
		for _, w := range names {
			key := tg + "/" + w
			r, ok := rows[key]
			if !assert.True(t, ok, "row %s missing", key) {
				continue
			}
			assert.Empty(t, r.Error, key)
			if r.Skipped != "" {
				assert.NotEqual(t, "thinblock-live", tg, "thinblock has every figure: %s skipped: %s", key, r.Skipped)
				continue
			}
			require.NotEmpty(t, r.Values, key)
			assert.NotEmpty(t, r.Unit, key)
			for _, v := range r.Values {
				assert.Greater(t, v, 0.0, key)
				if r.Unit == "MiB" {
					assert.GreaterOrEqual(t, v, 0.9*64, "%s: the quick run's 64 MiB volume given back", key)
				}
			}
		}
	}
	assert.Contains(t, stdout.String(), "### live-pool (reference: "+bench.LivePoolReference+")")
	if r := rows[bench.LivePoolReference+"/delete-give-back"]; r.Skipped != "" {
		assert.Contains(t, stdout.String(), "qcow2-live: skipped, "+r.Skipped, "a skipped row says why")
	}
}

// A workload named and also matched by a prefix runs once.
func TestWorkloadsNamedTwiceRunOnce(t *testing.T) {
	var stderr bytes.Buffer
	got := selectWorkloads(bench.AllWorkloads(&bench.Config{Quick: true}), "delete-give-back,delete-give-back-time", &stderr)
	var names []string
	for _, w := range got {
		names = append(names, w.Name)
	}
	assert.Equal(t, []string{"delete-give-back", "delete-give-back-time"}, names)
	assert.Empty(t, stderr.String())
}

// TestTheIOURingTargetServesOverIOURing runs the io_uring target, as
// root and in a user namespace, where the kernel's switch is on (make
// test turns it on for this test): every row has figures, which the
// harness gives only once the mount says it serves over io_uring.
func TestTheIOURingTargetServesOverIOURing(t *testing.T) {
	if data, err := os.ReadFile("/sys/module/fuse/parameters/enable_uring"); err != nil || strings.TrimSpace(string(data)) != "Y" {
		t.Skip("FUSE-over-io_uring is off (scripts/with-fuse-uring.sh turns it on; make test runs this test under it)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and /dev/fuse")
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(ourBinary(t, "UNIONBENCH_BIN", "cmd/unionbench"), "--quick", "--out", out, "--fuse-uring=false",
		"--targets", "unionmount-uring,unionmount", "--workloads", "create,stat,readdir",
		"--unionmount", ourBinary(t, "UNIONMOUNT_BIN", "cmd/unionmount"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "stderr:\n%s", stderr.String())
	rep, err := bench.ReadJSON(filepath.Join(out, "unionbench.json"))
	require.NoError(t, err)
	seen := map[bench.Family]int{}
	for _, r := range rep.Rows {
		if r.Target != "unionmount-uring" {
			continue
		}
		seen[r.Family]++
		assert.Empty(t, r.Skipped+r.Error, "%s/%s", r.Family, r.Workload)
		assert.NotEmpty(t, r.Values, "%s/%s", r.Family, r.Workload)
	}
	assert.Equal(t, 3, seen[bench.Union], "the io_uring target's union rows")
	if userns.Available() == nil {
		assert.Equal(t, 3, seen[bench.Rootless], "the io_uring target's rows in a user namespace")
	}
}
