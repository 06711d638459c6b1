package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// fioVerify runs fio's nbd engine on an export: 4 KiB random writes (or,
// with verifyOnly, none) at iodepth 16 on each of jobs connections, each
// over its own 8 MiB of the volume, then reads everything back and checks
// it. seed picks the data, so two phases write different data to the
// same blocks, and a later verifyOnly run with a phase's seed checks that
// phase's data is still there.
func fioVerify(t *testing.T, uri string, jobs int, seed int, verifyOnly bool) {
	t.Helper()
	args := []string{"--name=cow", "--ioengine=nbd", "--uri=" + uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", fmt.Sprintf("--numjobs=%d", jobs),
		"--size=8M", "--offset_increment=16M", fmt.Sprintf("--randseed=%d", seed),
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--group_reporting",
		// No verify state files in the source tree.
		"--verify_state_save=0"}
	if verifyOnly {
		args = append(args, "--verify_only")
	}
	out := runTool(t, "fio", args...)
	assert.Contains(t, out, "err= 0")
	assert.NotContains(t, out, "verify: bad")
}

// TestFioVerifiesCopyOnWriteOverSeveralConnections writes and verifies a
// volume over NBD, snapshots it, overwrites it (16 requests in flight on
// each of 4 connections, all 4 KiB pieces of 64 KiB blocks the snapshot
// shares, so the copies race each other) and verifies that, then checks
// the snapshot still holds the first phase's data and the volume the
// second's.
func TestFioVerifiesCopyOnWriteOverSeveralConnections(t *testing.T) {
	needTools(t, "fio")
	if !strings.Contains(runTool(t, "fio", "--enghelp"), "nbd") {
		t.Skip("this fio has no nbd engine")
	}
	bin := thinblockBinary(t, "")
	s, dir := startServer(t, bin, map[string]string{"1": "64M"})
	fioVerify(t, s.uri("1"), 4, 1, false)
	s.stop(t)
	mustRun(t, "snapshot", "--pool", dir, "2", "1")
	s = serve(t, bin, dir)
	fioVerify(t, s.uri("1"), 4, 2, false)
	fioVerify(t, s.uri("2"), 4, 1, true)
	fioVerify(t, s.uri("1"), 4, 2, true)
	s.stop(t)
	// A snapshot of the snapshot, written through one connection at
	// iodepth 16, copies from blocks three volumes share.
	mustRun(t, "snapshot", "--pool", dir, "3", "2")
	s = serve(t, bin, dir, "--writable-snapshots")
	fioVerify(t, s.uri("3"), 1, 3, false)
	fioVerify(t, s.uri("2"), 4, 1, true)
	fioVerify(t, s.uri("1"), 4, 2, true)
	s.stop(t)
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
}
