package thinblock_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/thinblock"
)

// reflinkDir mounts a fresh XFS with reflink (as mkfs.xfs makes it by
// default) on a loop device for the test, and returns a directory on it:
// there the pool's copy-on-write copies share extents instead of data.
// It skips where that cannot be done here.
func reflinkDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting an XFS image needs root")
	}
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("mkfs.xfs not installed (Debian package xfsprogs)")
	}
	if fss, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(fss), "\txfs\n") {
		t.Skip("the kernel has no XFS")
	}
	base := t.TempDir()
	img, mnt := filepath.Join(base, "xfs.img"), filepath.Join(base, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 1<<30)) // sparse; XFS wants 300 MiB at least
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount an XFS image here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt
}

// sharedExtents lists the lines of filefrag's report of path that are
// flagged shared: extents that another file range also maps.
func sharedExtents(t *testing.T, path string) []string {
	t.Helper()
	out, err := exec.Command("filefrag", "-v", path).CombinedOutput()
	require.NoError(t, err, "filefrag: %s", out)
	var shared []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "shared") {
			shared = append(shared, strings.TrimSpace(line))
		}
	}
	return shared
}

// TestFirstWriteAfterASnapshotSharesExtentsOnReflinkFilesystems writes a
// volume, snapshots it, commits, and writes 4 KiB into each of its
// blocks. On a filesystem with reflink the copy of each shared block is
// the filesystem's extent sharing (copy_file_range), so the data file's
// extents show as shared, and the snapshot still reads what the origin
// held while the origin reads its new data, before and after reopening.
func TestFirstWriteAfterASnapshotSharesExtentsOnReflinkFilesystems(t *testing.T) {
	if _, err := exec.LookPath("filefrag"); err != nil {
		t.Skip("filefrag not installed (Debian package e2fsprogs)")
	}
	dir := reflinkDir(t)
	const blocks = 8
	meta, data, reopen := filesIn(t, dir)
	p, err := thinblock.Create(meta, data, thinblock.CreateOptions{BlockSize: testBlock, DataSize: 4 * blocks * testBlock},
		thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	require.NoError(t, p.CreateVolume(1, blocks*testBlock))
	v, err := p.Volume(1)
	require.NoError(t, err)
	before := make([]byte, blocks*testBlock)
	for i := range before {
		before[i] = byte(i*31 + i>>16)
	}
	_, err = v.WriteAt(before, 0)
	require.NoError(t, err)
	require.NoError(t, p.Commit())
	require.Empty(t, sharedExtents(t, filepath.Join(dir, "data")), "nothing is shared before the snapshot")

	require.NoError(t, p.Snapshot(2, 1))
	require.NoError(t, p.Commit())
	after := bytes.Clone(before)
	piece := bytes.Repeat([]byte{0xa5}, 4096)
	for b := 0; b < blocks; b++ {
		off := b*testBlock + (b%16)*4096
		copy(after[off:], piece)
		_, err := v.WriteAt(piece, int64(off))
		require.NoError(t, err)
	}
	require.NoError(t, p.Commit())
	assert.NotEmpty(t, sharedExtents(t, filepath.Join(dir, "data")),
		"each copied block shares the extents of the block it was copied from")

	check := func(p *thinblock.Pool) {
		got := make([]byte, blocks*testBlock)
		for id, want := range map[uint64][]byte{1: after, 2: before} {
			vol, err := p.Volume(id)
			require.NoError(t, err)
			_, err = vol.ReadAt(got, 0)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "volume %d does not read what was written to it", id)
		}
	}
	check(p)
	require.NoError(t, p.Close())
	meta, data = reopen()
	p, err = thinblock.Open(meta, data, thinblock.Options{CommitInterval: -1})
	require.NoError(t, err)
	check(p)
	require.NoError(t, p.Close())
}
