package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
)

var unionmountBin struct {
	once sync.Once
	path string
	err  error
}

// unionmountBinary is $UNIONMOUNT_BIN (make test sets it), or a build.
func unionmountBinary(t *testing.T) string {
	t.Helper()
	unionmountBin.once.Do(func() {
		if b := os.Getenv("UNIONMOUNT_BIN"); b != "" {
			unionmountBin.path = b
			return
		}
		dir, err := os.MkdirTemp("", "unionmount-test-bin")
		if err != nil {
			unionmountBin.err = err
			return
		}
		unionmountBin.path = filepath.Join(dir, "unionmount")
		build := exec.Command("go", "build", "-o", unionmountBin.path, "../unionmount")
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make builds it
		if out, err := build.CombinedOutput(); err != nil {
			unionmountBin.err = fmt.Errorf("build unionmount: %v\n%s", err, out)
		}
	})
	if unionmountBin.err != nil {
		t.Fatal(unionmountBin.err)
	}
	return unionmountBin.path
}

// layerTar writes an OCI layer tarball: files (path -> content; a
// ".wh." name is a whiteout) under dir.
func layerTar(t *testing.T, dir, name string, files map[string]string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for path, content := range files {
		var parents []string // outermost first
		for d := filepath.Dir(path); d != "."; d = filepath.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if !dirs[d] {
				dirs[d] = true
				require.NoError(t, tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(1e9, 0)}))
			}
		}
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: path, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(1e9, 0)}))
		_, err := tw.Write([]byte(content))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	return path
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

func usedBlocks(t *testing.T, dir string) uint64 {
	t.Helper()
	var used, total uint64
	out := mustRun(t, "pool", "status", "--pool", dir)
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "data:") {
			_, err := fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "data:")), "%d/%d", &used, &total)
			require.NoError(t, err, line)
		}
	}
	return used
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// Docker's devicemapper flow on a live pool: a base volume with ext4,
// two image layers each a snapshot of its parent with a layer tarball
// applied and then marked read-only, containers as writable snapshots
// of the top layer, served and mounted at once through loop devices on
// the FUSE export, one more started and one deleted while the others
// run; space goes back to the host, the metadata checks, and each
// layer holds what it wrote, through NBD too.
func TestDockerDevicemapperFlowOnALivePool(t *testing.T) {
	requireRootFUSE(t)
	needTools(t, "losetup", "mkfs.ext4", "nbdcopy")
	start := time.Now()
	um := unionmountBinary(t)
	bin := thinblockBinary(t, "")
	work := t.TempDir()
	dir := filepath.Join(work, "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "2G")
	mustRun(t, "create", "--pool", dir, "1", "--size", "128M", "--name", "base")
	s := serveFuse(t, bin, dir)
	vol := func(id int) string { return filepath.Join(s.mnt, fmt.Sprint(id)) }

	dev := attach(t, vol(1), false)
	runTool(t, "mkfs.ext4", "-q", "-E", "nodiscard,lazy_itable_init=1", dev)
	detach(t, dev)
	mustRun(t, "set", "--pool", dir, "1", "--read-only")

	layers := []struct {
		id    int
		files map[string]string
	}{
		{2, map[string]string{"etc/os-release": "layer one\n", "usr/bin/tool": "tool v1\n", "var/lib/gone": "deleted by layer two\n"}},
		{3, map[string]string{"usr/bin/tool": "tool v2\n", "app/main": "the app\n", "var/lib/.wh.gone": ""}},
	}
	parent := 1
	for i, l := range layers {
		tarball := layerTar(t, work, fmt.Sprintf("layer%d.tar", i+1), l.files)
		mustRun(t, "snapshot", "--pool", dir, fmt.Sprint(l.id), fmt.Sprint(parent), "--name", fmt.Sprintf("layer-%d", i+1))
		dev := attach(t, vol(l.id), false)
		fsdir := mountDev(t, dev)
		runTool(t, um, "apply", "--flatten", tarball, fsdir)
		runTool(t, "umount", fsdir)
		detach(t, dev)
		mustRun(t, "set", "--pool", dir, fmt.Sprint(l.id), "--read-only")
		parent = l.id
	}
	// A read-only layer refuses writers.
	_, err := os.OpenFile(vol(3), os.O_WRONLY, 0)
	assert.ErrorIs(t, err, syscall.EROFS)

	type container struct {
		id  int
		dev string
		fs  string
	}
	startContainer := func(id int) container {
		mustRun(t, "snapshot", "--pool", dir, fmt.Sprint(id), "3", "--name", fmt.Sprintf("container-%d", id))
		c := container{id: id, dev: attach(t, vol(id), false)}
		c.fs = mountDev(t, c.dev)
		require.NoError(t, os.WriteFile(filepath.Join(c.fs, "app", "state"), []byte(fmt.Sprintf("container %d\n", id)), 0o644))
		return c
	}
	containers := []container{startContainer(10), startContainer(11), startContainer(12)}
	// Container 11 writes 32 MiB, given back when it is deleted.
	require.NoError(t, os.WriteFile(filepath.Join(containers[1].fs, "scratch"), bytes.Repeat([]byte("s"), 32<<20), 0o644))
	runTool(t, "sync", "-f", containers[1].fs)
	containers = append(containers, startContainer(13)) // while the others run

	for _, c := range containers {
		assert.Equal(t, "tool v2\n", readFile(t, filepath.Join(c.fs, "usr/bin/tool")))
		assert.Equal(t, "layer one\n", readFile(t, filepath.Join(c.fs, "etc/os-release")))
		assert.NoFileExists(t, filepath.Join(c.fs, "var/lib/gone"), "the whiteout of layer two hides it")
		assert.Equal(t, fmt.Sprintf("container %d\n", c.id), readFile(t, filepath.Join(c.fs, "app/state")))
	}

	// Deleting a running container is refused, naming its loop device.
	_, errOut, code := thinblockCmd("delete", "--pool", dir, "11")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, containers[1].dev)
	usedBefore := usedBlocks(t, dir)
	allocatedBefore := allocatedBytes(t, filepath.Join(dir, "data"))
	runTool(t, "umount", containers[1].fs)
	detach(t, containers[1].dev)
	deleteOnceReleased(t, dir, "11")
	assert.LessOrEqual(t, usedBlocks(t, dir)+32<<20/(64<<10), usedBefore, "the deleted container's blocks are free")
	fstest.WaitFor(patience, func() bool { return allocatedBytes(t, filepath.Join(dir, "data")) <= allocatedBefore-(32<<20) })
	assert.LessOrEqual(t, allocatedBytes(t, filepath.Join(dir, "data")), allocatedBefore-(32<<20), "the host gets the space back")
	assert.NoFileExists(t, vol(11))

	// The others still run.
	for _, c := range []container{containers[0], containers[2], containers[3]} {
		require.NoError(t, os.WriteFile(filepath.Join(c.fs, "app", "later"), []byte("still running"), 0o644))
		runTool(t, "umount", c.fs)
		detach(t, c.dev)
	}
	// What each volume holds, read through the FUSE export.
	sums := map[int]string{}
	for _, id := range []int{1, 2, 3, 10, 12, 13} {
		sums[id] = sha256File(t, vol(id))
	}
	// The layers read as written: mount each read-only.
	for id, want := range map[int]string{2: "tool v1\n", 3: "tool v2\n"} {
		dev := attach(t, vol(id), true)
		fsdir := mountDev(t, dev, "ro", "noload")
		assert.Equal(t, want, readFile(t, filepath.Join(fsdir, "usr/bin/tool")), "layer volume %d", id)
		_, err := os.Stat(filepath.Join(fsdir, "var/lib/gone"))
		assert.Equal(t, id == 3, os.IsNotExist(err), "layer volume %d: var/lib/gone", id)
		runTool(t, "umount", fsdir)
		detach(t, dev)
	}
	s.stop(t)
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")

	// The same content through NBD clients.
	ns := serve(t, bin, dir)
	for id, sum := range sums {
		out := filepath.Join(work, fmt.Sprintf("vol%d.img", id))
		runTool(t, "nbdcopy", ns.uri(fmt.Sprint(id)), out)
		assert.Equal(t, sum, sha256File(t, out), "volume %d over NBD", id)
		os.Remove(out)
	}
	ns.stop(t)
	t.Logf("the flow took %v", time.Since(start).Round(100*time.Millisecond))
}

func allocatedBytes(t *testing.T, path string) int64 { return fstest.DataBytes(t, path) }
