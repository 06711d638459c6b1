package mountstate

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseMountinfoReadsUnionLinesAndTheirEscapes(t *testing.T) {
	line := `88 27 0:53 / /tmp/a\040dir/merged rw,nosuid,nodev,relatime shared:41 - fuse.unionmount unionmount rw,user_id=0,group_id=0,default_permissions,allow_other`
	m, ok := parseMountinfo(line, "fuse.unionmount")
	require.True(t, ok)
	assert.Equal(t, Mount{Mountpoint: "/tmp/a dir/merged", Device: "0:53", Source: "unionmount"}, m)
	_, ok = parseMountinfo(`22 1 0:21 / /proc rw - proc proc rw`, "fuse.unionmount")
	assert.False(t, ok, "another filesystem type")
	_, ok = parseMountinfo("garbage", "fuse.unionmount")
	assert.False(t, ok)
}

// A record is written whole, read back while its daemon lives, and
// dropped (file and all) once the daemon is gone.
func TestRecordsOfDeadDaemonsAreDropped(t *testing.T) {
	dir := t.TempDir()
	remove, err := Write(dir, Record{Mountpoint: "/m", PID: os.Getpid(), Device: "0:99", Lowers: []string{"/l"}})
	require.NoError(t, err)
	got := readRecords(dir)
	require.Contains(t, got, "0:99")
	assert.Equal(t, []string{"/l"}, got["0:99"].Lowers)
	remove()
	assert.Empty(t, readRecords(dir))

	_, err = Write(dir, Record{Mountpoint: "/m", PID: 1 << 22, Device: "0:98"}) // beyond pid_max
	require.NoError(t, err)
	assert.Empty(t, readRecords(dir))
	names, _ := os.ReadDir(dir)
	assert.Empty(t, names, "the dead daemon's record file is removed, no temporary left")
}
