package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
)

// patience bounds every wait on a server process, a loop device or the
// kernel (see fstest.Patience): the tests here share two cores with the
// other packages' FUSE daemons, podman and qemu.
const patience = fstest.Patience

// exited reports whether the child pid has ended (a zombie not yet
// waited for, or gone), without reaping it: a wait for a server to come
// up stops early when the server has failed instead.
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
	return strings.HasPrefix(strings.TrimSpace(rest), "Z")
}

// deleteOnceReleased deletes volumes that a client has just let go of
// (a detached loop device, a closed NBD connection): the server hears
// of it a moment later (a FUSE release, a connection's end), so a delete
// refused as in use is tried again until it goes through or the
// patience runs out.
func deleteOnceReleased(t *testing.T, dir string, ids ...string) {
	t.Helper()
	var errOut string
	code := -1
	args := append([]string{"delete", "--pool", dir}, ids...)
	for deadline := time.Now().Add(patience); ; {
		if _, errOut, code = thinblockCmd(args...); code == 0 || !strings.Contains(errOut, "is in use") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, 0, code, "thinblock %v: %s", args, errOut)
}
