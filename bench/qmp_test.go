package bench

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// qcowLiveForTest starts the qcow2 live-pool target: a real
// qemu-storage-daemon exporting a 64 MiB qcow2 over NBD, its QMP
// monitor on a unix socket.
func qcowLiveForTest(t *testing.T) (*Instance, *qcowLive) {
	t.Helper()
	for _, tool := range []string{"qemu-storage-daemon", "qemu-img", "qemu-io"} {
		if !have(tool) {
			t.Skipf("%s not installed (Debian packages qemu-system-common, qemu-utils)", tool)
		}
	}
	env := &Env{cfg: &Config{Dir: t.TempDir()}, size: sizes{blockBytes: 64 << 20}}
	inst, err := LivePoolTargets()[0].Setup(env)
	require.NoError(t, err)
	t.Cleanup(func() { inst.Close() })
	return inst, inst.live.(*qcowLive)
}

func qemuIO(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	require.NoError(t, err, "qemu-io %s: %s", strings.Join(args, " "), out)
	require.NotContains(t, string(out), "Pattern verification failed", "qemu-io %s", strings.Join(args, " "))
	return string(out)
}

// A live snapshot over QMP moves the NBD export onto the new overlay:
// writes after it land in the overlay, and the image under it keeps
// what it held when the snapshot was taken.
func TestQMPSnapshotMovesTheExportOntoTheOverlay(t *testing.T) {
	inst, q := qcowLiveForTest(t)
	exports, err := q.qmp.exports()
	require.NoError(t, err)
	require.Len(t, exports, 1)
	assert.Equal(t, "disk", exports[0].NodeName)

	qemuIO(t, "-f", "raw", "-c", "write -P 0x11 0 1M", inst.URI)
	require.NoError(t, q.snapshot())
	qemuIO(t, "-f", "raw", "-c", "write -P 0x22 0 64k", inst.URI)
	require.NoError(t, q.snapshot())
	exports, err = q.qmp.exports()
	require.NoError(t, err)
	require.Len(t, exports, 1)
	assert.Equal(t, "snap2", exports[0].NodeName, "the export follows the active layer")

	// Through the export: the newest data over the older.
	qemuIO(t, "-r", "-f", "raw", "-c", "read -P 0x22 0 64k", "-c", "read -P 0x11 64k 960k", inst.URI)
	require.NoError(t, q.close())
	dir := q.dir
	// The images themselves, once the daemon let go: the first holds
	// the first write only, the first overlay the second write.
	qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x11 0 1M", filepath.Join(dir, "disk.qcow2"))
	qemuIO(t, "-r", "-f", "qcow2", "-c", "read -P 0x22 0 64k", filepath.Join(dir, "snap1.qcow2"))
	out, err := exec.Command("qemu-img", "info", "--output=json", filepath.Join(dir, "snap2.qcow2")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), `"backing-filename": "`+filepath.Join(dir, "snap1.qcow2")+`"`)
}

// A refused command is a *qmpError naming QEMU's class, and the
// connection goes on answering; events between answers are skipped.
func TestQMPErrorsAndEventsLeaveTheConnectionUsable(t *testing.T) {
	_, q := qcowLiveForTest(t)
	err := q.qmp.snapshotSync("no-such-node", filepath.Join(q.dir, "x.qcow2"), "x")
	var qerr *qmpError
	require.True(t, errors.As(err, &qerr), "%v", err)
	assert.Contains(t, qerr.Desc, "no-such-node")

	err = q.qmp.execute("no-such-command", nil, nil)
	require.True(t, errors.As(err, &qerr), "%v", err)
	assert.Equal(t, "CommandNotFound", qerr.Class)

	// Removing the export sends BLOCK_EXPORT_DELETED, before or after
	// the answer: every later answer must still be its own command's.
	require.NoError(t, q.qmp.execute("block-export-del", map[string]string{"id": "exp0"}, nil))
	for i := 0; i < 100; i++ {
		exports, err := q.qmp.exports()
		require.NoError(t, err)
		if len(exports) == 0 {
			break
		}
	}
	exports, err := q.qmp.exports()
	require.NoError(t, err)
	assert.Empty(t, exports)
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	require.NoError(t, q.qmp.execute("query-named-block-nodes", nil, &nodes))
	assert.NotEmpty(t, nodes)
}

// A socket that is not QEMU's monitor is refused with a reason, not
// waited on.
func TestQMPDialRefusesAnotherProtocol(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "other.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(`{"hello": "not qmp"}` + "\n"))
			c.Close()
		}
	}()
	_, err = dialQMP(sock)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no greeting")

	_, err = dialQMP(filepath.Join(t.TempDir(), "absent.sock"))
	assert.Error(t, err)
}
