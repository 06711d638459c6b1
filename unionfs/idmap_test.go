package unionfs_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pkg/xattr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

func TestParseIDMap(t *testing.T) {
	m, err := unionfs.ParseIDMap("0:1000:1:1:100000:65536")
	require.NoError(t, err)
	assert.Equal(t, uint32(1000), m.Shown(0))
	assert.Equal(t, uint32(100004), m.Shown(5))
	assert.Equal(t, uint32(unionfs.OverflowID), m.Shown(70000), "unmapped ids show as the overflow id")
	id, ok := m.Stored(100004)
	assert.True(t, ok)
	assert.Equal(t, uint32(5), id)
	_, ok = m.Stored(999)
	assert.False(t, ok)
	assert.True(t, unionfs.IDMap{}.Identity())
	for _, bad := range []string{"", "0:1000", "a:b:c", "0:1000:0", "0:0:10:5:100:1", "4294967295:0:2"} {
		_, err := unionfs.ParseIDMap(bad)
		assert.Error(t, err, "%q", bad)
	}
}

// A layer kept with a container's ids shows them shifted; ids outside
// the mapping show as the overflow id; new objects and chown store ids
// shifted back.
func TestUIDMappingShiftsOwners(t *testing.T) {
	fstest.RequireFUSE(t)
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/": "", "root": "r", "one": "1", "stray": "s"})
	own := map[string]int{"d": 0, "root": 0, "one": 1, "stray": 70000}
	for name, id := range own {
		require.NoError(t, os.Lchown(filepath.Join(l.Lowers[0], name), id, id))
	}
	require.NoError(t, os.Chmod(filepath.Join(l.Lowers[0], "d"), 0o755))
	uniontest.Mount(t, l, "uidmapping=0:1000:1:1:100000:1000", "gidmapping=0:1000:1:1:100000:1000")
	m := l.Mount
	for name, want := range map[string]uint32{"d": 1000, "root": 1000, "one": 100000, "stray": unionfs.OverflowID} {
		st := lstat(t, m+"/"+name)
		assert.Equal(t, [2]uint32{want, want}, [2]uint32{st.Uid, st.Gid}, name)
	}

	// chown through the mount stores the id shifted back; an id the
	// mapping does not cover cannot be stored.
	require.NoError(t, os.Lchown(m+"/one", 100005, 100006))
	st := lstat(t, l.Upper+"/one")
	assert.Equal(t, [2]uint32{6, 7}, [2]uint32{st.Uid, st.Gid}, "100005 is 1+5 stored")
	assert.Equal(t, unix.EINVAL, errnoOf(os.Lchown(m+"/one", 5, -1)))

	// A file made by shown uid 1000 is kept as 0 in the upper.
	out, err := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "touch", m+"/d/new").CombinedOutput()
	require.NoError(t, err, "setpriv (util-linux, installed by make test): %s", out)
	st = lstat(t, l.Upper+"/d/new")
	assert.Equal(t, [2]uint32{0, 0}, [2]uint32{st.Uid, st.Gid}, "stored ids of a new file")
	st = lstat(t, m+"/d/new")
	assert.Equal(t, [2]uint32{1000, 1000}, [2]uint32{st.Uid, st.Gid}, "shown ids of a new file")
}

// With xattr_permissions=2 owners and modes live in
// user.containers.override_stat: chown never reaches the real file, the
// mount shows the recorded values and hides the xattr, and a lower
// layer's recorded values show too.
func TestXattrPermissionsKeepOwnersInAnXattr(t *testing.T) {
	fstest.RequireFUSE(t)
	l := fstest.NewLayers(t, 1)
	fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"recorded": "r", "plain": "p"})
	require.NoError(t, xattr.LSet(filepath.Join(l.Lowers[0], "recorded"), "user.containers.override_stat", []byte("7:8:04750")))
	uniontest.Mount(t, l, "xattr_permissions=2")
	m := l.Mount

	st := lstat(t, m+"/recorded")
	assert.Equal(t, [2]uint32{7, 8}, [2]uint32{st.Uid, st.Gid})
	assert.Equal(t, uint32(unix.S_IFREG|0o4750), st.Mode)
	names, err := xattr.LList(m + "/recorded")
	require.NoError(t, err)
	assert.NotContains(t, names, "user.containers.override_stat", "the override is the union's, not the user's")

	require.NoError(t, os.Lchown(m+"/plain", 1234, 5678))
	require.NoError(t, os.Chmod(m+"/plain", 0o600))
	st = lstat(t, m+"/plain")
	assert.Equal(t, [2]uint32{1234, 5678}, [2]uint32{st.Uid, st.Gid})
	assert.Equal(t, uint32(unix.S_IFREG|0o600), st.Mode)
	real := lstat(t, l.Upper+"/plain")
	assert.Equal(t, [2]uint32{0, 0}, [2]uint32{real.Uid, real.Gid}, "the real owner is untouched")
	v, err := xattr.LGet(l.Upper+"/plain", "user.containers.override_stat")
	require.NoError(t, err)
	assert.Equal(t, "1234:5678:0600", string(v))

	f, err := os.Open(m + "/plain")
	require.NoError(t, err)
	defer f.Close()
	var fst unix.Stat_t
	require.NoError(t, unix.Fstat(int(f.Fd()), &fst))
	assert.Equal(t, uint32(1234), fst.Uid, "through an open file too")

	require.NoError(t, os.WriteFile(m+"/new", []byte("n"), 0o640))
	v, err = xattr.LGet(l.Upper+"/new", "user.containers.override_stat")
	require.NoError(t, err)
	assert.Equal(t, "0:0:0640", string(v), "a new file records its creator")
}
