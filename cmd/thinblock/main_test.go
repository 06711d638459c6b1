package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// thinblockCmd runs the command in-process and returns its output and
// exit status.
func thinblockCmd(args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), code
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := thinblockCmd(args...)
	require.Equal(t, 0, code, "thinblock %v: %s", args, errOut)
	return out
}

// samplePool makes a pool with data in two volumes and a snapshot.
func samplePool(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "64M")
	mustRun(t, "create", "--pool", dir, "1", "--size", "8M")
	mustRun(t, "create", "--pool", dir, "2", "--size", "3M")
	// Write through the library, as a served client would.
	meta, err := blockdev.OpenFile(dir+"/metadata", false)
	require.NoError(t, err)
	data, err := blockdev.OpenFile(dir+"/data", false)
	require.NoError(t, err)
	p, err := thinblock.Open(meta, data, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	v1, _ := p.Volume(1)
	for _, off := range []int64{0, 64 << 10, 5 << 20} {
		_, err := v1.WriteAt(bytes.Repeat([]byte{0xab}, 128<<10), off)
		require.NoError(t, err)
	}
	require.NoError(t, p.Snapshot(3, 1))
	_, err = v1.WriteAt([]byte("changed after the snapshot"), 0)
	require.NoError(t, err)
	v2, _ := p.Volume(2)
	_, err = v2.WriteAt([]byte("two"), 1<<20)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	meta.Close()
	data.Close()
	return dir
}

func TestCommandsOnASamplePool(t *testing.T) {
	dir := samplePool(t)
	ls := mustRun(t, "ls", "--pool", dir)
	assert.Regexp(t, `(?m)^\s+1\s+8\.0 MiB\s+320\.0 KiB\s+64\.0 KiB\s+256\.0 KiB\s+-\s+-\s*$`, ls)
	assert.Regexp(t, `(?m)^\s+3\s+8\.0 MiB\s+320\.0 KiB\s+64\.0 KiB\s+256\.0 KiB\s+-\s+1\s*$`, ls)
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
	delta := mustRun(t, "delta", "--pool", dir, "1", "3")
	assert.Contains(t, delta, `<different begin="0" length="1"/>`)
	assert.Contains(t, delta, `<same begin="1" length="2"/>`)
	status := mustRun(t, "pool", "status", "--pool", dir)
	assert.Contains(t, status, "data:            7/1024 blocks used")
	mustRun(t, "delete", "--pool", dir, "1")
	assert.Contains(t, mustRun(t, "pool", "status", "--pool", dir), "data:            6/1024 blocks used",
		"deleting frees exactly the one block only volume 1 had")
	mustRun(t, "pool", "resize", "--pool", dir, "--size", "128M")
	assert.Contains(t, mustRun(t, "pool", "status", "--pool", dir), "/2048 blocks used")
}

func TestBadInputFailsAndLeavesThePoolUnchanged(t *testing.T) {
	dir := samplePool(t)
	before, err := os.ReadFile(dir + "/metadata")
	require.NoError(t, err)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"a volume that does not exist", []string{"delete", "--pool", dir, "42"}, "no such volume"},
		{"a snapshot of a missing volume", []string{"snapshot", "--pool", dir, "9", "42"}, "no such volume"},
		{"an id already in use", []string{"create", "--pool", dir, "2", "--size", "1M"}, "already in use"},
		{"a bad size", []string{"create", "--pool", dir, "7", "--size", "lots"}, "size"},
		{"a block size that is not allowed", []string{"pool", "create", "--pool", dir + "2", "--size", "1G", "--block-size", "48K"}, "power of two"},
		{"a missing pool", []string{"ls", "--pool", dir + "/nope"}, "no such file"},
		{"an unknown command", []string{"frobnicate"}, "unknown command"},
		{"a shrink below blocks in use", []string{"pool", "resize", "--pool", dir, "--size", "64K"}, "in use"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errOut, code := thinblockCmd(c.args...)
			assert.NotEqual(t, 0, code)
			assert.Contains(t, errOut, c.want)
			after, err := os.ReadFile(dir + "/metadata")
			require.NoError(t, err)
			assert.True(t, bytes.Equal(before, after), "metadata unchanged")
		})
	}
	_, err = os.Stat(dir + "2")
	assert.True(t, os.IsNotExist(err) || isEmptyDir(dir+"2"), "a refused pool create leaves no files")
}

func isEmptyDir(d string) bool {
	ents, err := os.ReadDir(d)
	return err == nil && len(ents) == 0
}

func TestCorruptMetadataIsRefused(t *testing.T) {
	for name, corrupt := range map[string]func(b []byte) []byte{
		"truncated":      func(b []byte) []byte { return b[:4096] },
		"wrong magic":    func(b []byte) []byte { b[4] ^= 0xff; b[4096+4] ^= 0xff; return b },
		"wrong checksum": func(b []byte) []byte { b[20] ^= 1; b[4096+20] ^= 1; return b },
		"empty":          func(b []byte) []byte { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			dir := samplePool(t)
			b, err := os.ReadFile(dir + "/metadata")
			require.NoError(t, err)
			bad := corrupt(b)
			require.NoError(t, os.WriteFile(dir+"/metadata", bad, 0o600))
			for _, args := range [][]string{{"ls", "--pool", dir}, {"check", "--pool", dir}} {
				_, errOut, code := thinblockCmd(args...)
				assert.Equal(t, 2, code, "%v: %s", args, errOut)
				assert.Regexp(t, regexp.MustCompile(`superblock|truncated`), errOut)
			}
			after, _ := os.ReadFile(dir + "/metadata")
			assert.True(t, bytes.Equal(bad, after), "nothing written")
		})
	}
}

func TestCheckFindsAndRepairsAWrongSpaceMap(t *testing.T) {
	dir := samplePool(t)
	// Break one data block's count behind the pool's back.
	meta, _ := blockdev.OpenFile(dir+"/metadata", false)
	data, _ := blockdev.OpenFile(dir+"/data", false)
	p, err := thinblock.Open(meta, data, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	require.NoError(t, thinblock.CorruptDataCountForTest(p, 0, 7))
	require.NoError(t, p.Close())
	meta.Close()
	data.Close()

	out, _, code := thinblockCmd("check", "--pool", dir)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "data block 0 has count 7")
	out, errOut, code := thinblockCmd("check", "--pool", dir, "--repair")
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "repaired")
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
}

// The dump must load with thin-provisioning-tools' thin_restore and pass
// thin_check; thin_dump of that must restore into the same mappings.
func TestDumpRoundTripsThroughThinProvisioningTools(t *testing.T) {
	for _, tool := range []string{"thin_restore", "thin_check", "thin_dump"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian package thin-provisioning-tools)", tool)
		}
	}
	dir := samplePool(t)
	work := t.TempDir()
	ours := mustRun(t, "dump", "--pool", dir)
	require.NoError(t, os.WriteFile(work+"/ours.xml", []byte(ours), 0o644))
	require.NoError(t, os.WriteFile(work+"/meta.bin", make([]byte, 8<<20), 0o644))
	out, err := exec.Command("thin_restore", "-i", work+"/ours.xml", "-o", work+"/meta.bin").CombinedOutput()
	require.NoError(t, err, "thin_restore: %s", out)
	out, err = exec.Command("thin_check", work+"/meta.bin").CombinedOutput()
	require.NoError(t, err, "thin_check: %s", out)
	theirs, err := exec.Command("thin_dump", work+"/meta.bin").Output()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(work+"/theirs.xml", theirs, 0o644))

	// thin_dump meta.bin | thinblock restore, with the real binary.
	restored := filepath.Join(work, "restored")
	self, err := os.Executable()
	require.NoError(t, err)
	pipe := exec.Command("sh", "-c", `thin_dump "$1" | "$2" restore --pool "$3"`, "sh", work+"/meta.bin", thinblockBinary(t, self), restored)
	out, err = pipe.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, mustRun(t, "check", "--pool", restored), "metadata is consistent")
	again := mustRun(t, "dump", "--pool", restored)
	assert.Equal(t, mappingLines(ours), mappingLines(again), "same devices and mappings")
	assert.NotEmpty(t, mappingLines(ours))
}

// mappingLines keeps the device and mapping elements of a dump, less the
// attributes that name transactions and sizes.
func mappingLines(xml string) []string {
	strip := regexp.MustCompile(` (transaction|thinblock_size)="[^"]*"`)
	var out []string
	for _, l := range strings.Split(xml, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "<device") || strings.HasSuffix(l, "mapping") || strings.Contains(l, "_mapping ") {
			out = append(out, strip.ReplaceAllString(l, ""))
		}
	}
	return out
}

// testBinary is the command built once for the tests that need a real
// process: $THINBLOCK_BIN (make test sets it) or a fresh build.
var testBinary struct {
	once sync.Once
	path string
	err  error
}

func thinblockBinary(t *testing.T, _ string) string {
	t.Helper()
	testBinary.once.Do(func() {
		if b := os.Getenv("THINBLOCK_BIN"); b != "" {
			testBinary.path = b
			return
		}
		dir, err := os.MkdirTemp("", "thinblock-test-bin")
		if err != nil {
			testBinary.err = err
			return
		}
		testBinary.path = filepath.Join(dir, "thinblock")
		if msg, err := exec.Command("go", "build", "-o", testBinary.path, ".").CombinedOutput(); err != nil {
			testBinary.err = fmt.Errorf("build: %v\n%s", err, msg)
		}
	})
	if testBinary.err != nil {
		t.Fatal(testBinary.err)
	}
	return testBinary.path
}

func TestPoolOnABlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("needs losetup")
	}
	dir := t.TempDir()
	backing := filepath.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(backing, nil, 0o600))
	require.NoError(t, os.Truncate(backing, 32<<20))
	out, err := exec.Command("losetup", "--find", "--show", backing).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	meta := filepath.Join(dir, "metadata")
	created := mustRun(t, "pool", "create", "--meta", meta, "--data", dev)
	assert.Contains(t, created, "512 blocks", "the pool takes the device's size")
	mustRun(t, "create", "--meta", meta, "--data", dev, "1", "--size", "1G")
	assert.Contains(t, mustRun(t, "pool", "status", "--meta", meta, "--data", dev), "0/512 blocks used")
	assert.Contains(t, mustRun(t, "check", "--meta", meta), "metadata is consistent")
}

// A dump whose numbers do not parse is refused, naming the attribute; it
// was read as 0 before, and the volume made with a time of 0.
func TestRestoreRefusesAttributesThatDoNotParse(t *testing.T) {
	for _, c := range []struct{ name, xml, want string }{
		{"a device's snap_time", `<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="100"><device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="soon"></device></superblock>`, `snap_time="soon"`},
		{"a mapping's time", `<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="100"><device dev_id="1" mapped_blocks="1" transaction="0" creation_time="0" snap_time="0"><single_mapping origin_block="0" data_block="0" time="-1"/></device></superblock>`, `time="-1"`},
		{"the superblock's time", `<superblock uuid="" time="x" transaction="1" data_block_size="128" nr_data_blocks="100"></superblock>`, `time="x"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pool")
			in := filepath.Join(t.TempDir(), "dump.xml")
			require.NoError(t, os.WriteFile(in, []byte(c.xml), 0o644))
			_, errOut, code := thinblockCmd("restore", "--pool", dir, "-i", in)
			assert.NotEqual(t, 0, code)
			assert.Contains(t, errOut, c.want)
		})
	}
}
