package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/unionmount/unionmount/internal/fstest"
)

// server is a running `thinblock serve nbd`, on a unix socket (sock)
// or a TCP address (addr).
type server struct {
	cmd    *exec.Cmd
	sock   string
	addr   string
	stderr *lockedBuffer
}

// lockedBuffer is a server's stderr, read while the server writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (s *server) uri(export string) string {
	return "nbd+unix:///" + export + "?socket=" + s.sock
}

// stop sends SIGTERM and returns the server's stderr.
func (s *server) stop(t *testing.T) string {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, s.cmd.Wait(), "exit status after SIGTERM: %s", s.stderr)
	return s.stderr.String()
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (make test installs libnbd-bin, qemu-utils and fio)", tool)
		}
	}
}

// startServer creates a pool with the given volumes (id -> size) and
// serves it over a unix socket.
func startServer(t *testing.T, bin string, vols map[string]string, extra ...string) (*server, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", dir, "--size", "32G")
	for id, size := range vols {
		mustRun(t, "create", "--pool", dir, id, "--size", size)
	}
	return serve(t, bin, dir, extra...), dir
}

func serve(t *testing.T, bin, dir string, extra ...string) *server {
	t.Helper()
	s := &server{sock: filepath.Join(dir, "nbd.sock"), stderr: &lockedBuffer{}}
	s.cmd = exec.Command(bin, append([]string{"serve", "nbd", "--pool", dir}, extra...)...)
	s.cmd.Stderr = s.stderr
	require.NoError(t, s.cmd.Start())
	fstest.WaitFor(patience, func() bool {
		_, err := os.Stat(s.sock)
		return err == nil || exited(s.cmd.Process.Pid)
	})
	require.FileExists(t, s.sock, "server did not start: %s", s.stderr)
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			s.cmd.Wait()
		}
	})
	return s
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v:\n%s", name, args, out)
	return string(out)
}

func TestNBDInfoListsExportsAndCapabilities(t *testing.T) {
	needTools(t, "nbdinfo")
	s, dir := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "1G", "7": "10M"})
	list := runTool(t, "nbdinfo", "--list", "--json", "nbd+unix:///?socket="+s.sock)
	var info struct {
		Exports []struct {
			Name         string   `json:"export-name"`
			Size         uint64   `json:"export-size"`
			Contexts     []string `json:"contexts"`
			ReadOnly     bool     `json:"is_read_only"`
			MultiConn    bool     `json:"can_multi_conn"`
			Trim         bool     `json:"can_trim"`
			Zero         bool     `json:"can_zero"`
			FastZero     bool     `json:"can_fast_zero"`
			FUA          bool     `json:"can_fua"`
			Flush        bool     `json:"can_flush"`
			Cache        bool     `json:"can_cache"`
			MaximumBlock uint64   `json:"block_size_maximum"`
		} `json:"exports"`
	}
	require.NoError(t, json.Unmarshal([]byte(list), &info), list)
	require.Len(t, info.Exports, 2)
	e := info.Exports[0]
	assert.Equal(t, "1", e.Name)
	assert.Equal(t, uint64(1<<30), e.Size)
	assert.Contains(t, e.Contexts, "base:allocation")
	assert.True(t, e.MultiConn && e.Trim && e.Zero && e.FastZero && e.FUA && e.Flush && e.Cache, "%+v", e)
	assert.False(t, e.ReadOnly)
	assert.Equal(t, uint64(10<<20), info.Exports[1].Size)
	s.stop(t)

	// Read-only is each volume's own attribute, chosen when it is made;
	// a snapshot is writable by default, as in dm-thin.
	mustRun(t, "snapshot", "--pool", dir, "2", "1", "--read-only")
	mustRun(t, "snapshot", "--pool", dir, "3", "1")
	s = serve(t, thinblockBinary(t, ""), dir)
	assert.Contains(t, runTool(t, "nbdinfo", s.uri("2")), "is_read_only: true")
	assert.Contains(t, runTool(t, "nbdinfo", s.uri("3")), "is_read_only: false")
	assert.Contains(t, runTool(t, "nbdinfo", s.uri("1")), "is_read_only: false")
	// Made while served, through the control socket: the same.
	mustRun(t, "create", "--pool", dir, "4", "--size", "1M", "--read-only", "--name", "layer")
	assert.Contains(t, runTool(t, "nbdinfo", s.uri("4")), "is_read_only: true")
	s.stop(t)
	// The deprecated flag still starts the server, with a note; it no
	// longer overrides a volume made read-only.
	s = serve(t, thinblockBinary(t, ""), dir, "--writable-snapshots")
	assert.Contains(t, runTool(t, "nbdinfo", s.uri("2")), "is_read_only: true")
	assert.Contains(t, s.stop(t), "--writable-snapshots is deprecated")
}

func TestQemuIOPatternsAndTheAllocationMap(t *testing.T) {
	needTools(t, "nbdinfo", "qemu-io")
	s, dir := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "8G"})
	runTool(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 1G 64k",
		// Zeroes without unmap (NO_HOLE) stay allocated; with unmap a
		// written block goes back to the pool.
		"-c", "write -z 4M 64k", "-c", "write -P 0xee 8M 64k", "-c", "write -z -u 8M 64k",
		"-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 1G 64k", "-c", "read -P 0 2G 1M", "-c", "read -P 0 8M 64k", s.uri("1"))
	m := runTool(t, "nbdinfo", "--map", s.uri("1"))
	// The map must match the pool's mappings.
	want := fmt.Sprintf(`(?s)^\s*0\s+1048576\s+0\s+data\s+1048576\s+3145728\s+3\s+hole,zero\s+4194304\s+65536\s+0\s+data\s+`+
		`4259840\s+%d\s+3\s+hole,zero\s+1073741824\s+65536\s+0\s+data\s+1073807360\s+%d\s+3\s+hole,zero\s*$`,
		1<<30-4259840, 8<<30-(1<<30+64<<10))
	assert.Regexp(t, want, m)
	s.stop(t)
	ls := mustRun(t, "ls", "--pool", dir)
	assert.Regexp(t, `(?m)^\s+1\s+8\.0 GiB\s+1\.1 MiB`, ls, "18 blocks of 64 KiB mapped")
}

func TestNbdcopyOfAMostlyEmptyVolumeReadsOnlyMappedRanges(t *testing.T) {
	needTools(t, "nbdcopy", "qemu-io")
	s, _ := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "8G"})
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 6G 1M", s.uri("1"))
	out := filepath.Join(t.TempDir(), "copy.raw")
	start := time.Now()
	runTool(t, "nbdcopy", s.uri("1"), out)
	took := time.Since(start)
	st, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, int64(8<<30), st.Size())
	f, err := os.Open(out)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, 1<<20)
	_, err = f.ReadAt(buf, 6<<30)
	require.NoError(t, err)
	assert.Equal(t, bytes.Repeat([]byte{0x22}, 1<<20), buf)
	stats := s.stop(t)
	read := serverBytes(t, stats, "read")
	assert.LessOrEqual(t, read, uint64(3<<20), "nbdcopy read %d bytes: only the 3 MiB mapped", read)
	t.Logf("nbdcopy of 8 GiB with 3 MiB mapped: %v, %d bytes read from the server", took, read)
}

func serverBytes(t *testing.T, stderr, what string) uint64 {
	m := regexp.MustCompile(what + ` (\d+) bytes`).FindStringSubmatch(stderr)
	require.NotNil(t, m, "no %s statistics in: %s", what, stderr)
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

func TestQemuImgConvertToAndFromAnExport(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	s, _ := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "64M", "2": "64M"})
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 0xa5 60M 64k", s.uri("1"))
	img := filepath.Join(t.TempDir(), "image.qcow2")
	runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.uri("1"), img)
	runTool(t, "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", img, s.uri("2"))
	out := runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", s.uri("1"), s.uri("2"))
	assert.Contains(t, out, "Images are identical")
	runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 3M", "-c", "read -P 0xa5 60M 64k", "-c", "read -P 0 0 1M", s.uri("2"))
	s.stop(t)
}

func TestFioVerifiesOverOneAndSeveralConnections(t *testing.T) {
	needTools(t, "fio")
	if !strings.Contains(runTool(t, "fio", "--enghelp"), "nbd") {
		t.Skip("this fio has no nbd engine")
	}
	s, _ := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "256M"})
	for _, c := range []struct{ iodepth, jobs int }{{1, 1}, {16, 1}, {16, 4}} {
		t.Run(fmt.Sprintf("iodepth=%d,connections=%d", c.iodepth, c.jobs), func(t *testing.T) {
			out := runTool(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+s.uri("1"),
				"--rw=randwrite", "--bs=4k", fmt.Sprintf("--iodepth=%d", c.iodepth),
				fmt.Sprintf("--numjobs=%d", c.jobs), "--size=32M", "--offset_increment=64M",
				"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--group_reporting",
				// No verify state files in the source tree.
				"--verify_state_save=0")
			assert.Contains(t, out, "err= 0")
			assert.NotContains(t, out, "verify: bad")
		})
	}
	s.stop(t)
}

// A raw client breaking the protocol gets an error reply or a clean
// disconnect, and the server keeps serving others.
func TestMalformedRequestsGetErrorsNotCrashes(t *testing.T) {
	bin := thinblockBinary(t, "")
	s, _ := startServer(t, bin, map[string]string{"1": "1M"})
	malformedRequests(t, func() *rawClient { return dialExport(t, s.sock, "1") },
		func() net.Conn {
			raw, err := net.Dial("unix", s.sock)
			require.NoError(t, err)
			return raw
		})
	s.stop(t)
}

// malformedRequests sends bad requests on a client of export "1" (1 MiB)
// that dial connects, and garbage on a connection that dialRaw opens.
func malformedRequests(t *testing.T, dial func() *rawClient, dialRaw func() net.Conn) {
	c := dial()
	// Past the end: EINVAL for a read, ENOSPC for a write.
	assert.Equal(t, uint32(22), c.request(t, 0, 1, 1<<20-10, 20, nil))
	assert.Equal(t, uint32(28), c.request(t, 1, 2, 1<<20-10, 20, make([]byte, 20)))
	// Offset + length wrapping around.
	assert.Equal(t, uint32(22), c.request(t, 0, 3, ^uint64(0)-5, 10, nil))
	// An oversized read.
	assert.Equal(t, uint32(22), c.request(t, 0, 4, 0, 64<<20, nil))
	// An unknown command.
	assert.Equal(t, uint32(22), c.request(t, 42, 5, 0, 0, nil))
	// A good write and read still work on the same connection.
	assert.Equal(t, uint32(0), c.request(t, 1, 6, 4096, 4, []byte("abcd")))
	assert.Equal(t, uint32(0), c.request(t, 0, 7, 4096, 4, nil))
	// A bad magic: the server hangs up.
	hdr := make([]byte, 28)
	binary.BigEndian.PutUint32(hdr, 0xdeadbeef)
	c.conn.Write(hdr)
	c.conn.SetReadDeadline(time.Now().Add(patience))
	_, err := c.conn.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "connection closed")
	// Garbage during negotiation.
	raw := dialRaw()
	raw.Write([]byte("this is not NBD at all, not even close......"))
	raw.SetReadDeadline(time.Now().Add(patience))
	io.Copy(io.Discard, raw)
	raw.Close()
	// Another client is still served.
	c2 := dial()
	assert.Equal(t, uint32(0), c2.request(t, 0, 1, 4096, 4, nil))
	assert.Equal(t, "abcd", string(c2.lastData))
}

// rawClient speaks just enough NBD (fixed newstyle, EXPORT_NAME, simple
// replies) to send requests a real client never would.
type rawClient struct {
	conn     net.Conn
	lastData []byte
}

func dialExport(t *testing.T, sock, name string) *rawClient {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	greet(t, conn)
	return exportName(t, conn, name)
}

// greet reads the server's greeting and answers it: fixed newstyle, no
// zeroes.
func greet(t *testing.T, conn net.Conn) {
	t.Helper()
	hello := make([]byte, 18)
	conn.SetReadDeadline(time.Now().Add(patience))
	_, err := io.ReadFull(conn, hello)
	require.NoError(t, err)
	require.Equal(t, "NBDMAGIC", string(hello[:8]))
	_, err = conn.Write(binary.BigEndian.AppendUint32(nil, 3))
	require.NoError(t, err)
}

// sendOption sends one option request.
func sendOption(t *testing.T, conn net.Conn, code uint32, data []byte) {
	t.Helper()
	be := binary.BigEndian
	opt := be.AppendUint64(nil, 0x49484156454f5054)
	opt = be.AppendUint32(opt, code)
	opt = be.AppendUint32(opt, uint32(len(data)))
	_, err := conn.Write(append(opt, data...))
	require.NoError(t, err)
}

// exportName enters transmission with NBD_OPT_EXPORT_NAME.
func exportName(t *testing.T, conn net.Conn, name string) *rawClient {
	t.Helper()
	sendOption(t, conn, 1, []byte(name))
	reply := make([]byte, 10)
	_, err := io.ReadFull(conn, reply)
	require.NoError(t, err)
	return &rawClient{conn: conn}
}

func (c *rawClient) request(t *testing.T, typ uint16, cookie, off uint64, length uint32, data []byte) uint32 {
	t.Helper()
	return c.requestFlags(t, 0, typ, cookie, off, length, data)
}

// requestFlags sends one request with the given command flags and
// returns the reply's errno (reading the data of a successful READ).
func (c *rawClient) requestFlags(t *testing.T, flags, typ uint16, cookie, off uint64, length uint32, data []byte) uint32 {
	t.Helper()
	be := binary.BigEndian
	req := be.AppendUint32(nil, 0x25609513)
	req = be.AppendUint16(req, flags)
	req = be.AppendUint16(req, typ)
	req = be.AppendUint64(req, cookie)
	req = be.AppendUint64(req, off)
	req = be.AppendUint32(req, length)
	_, err := c.conn.Write(append(req, data...))
	require.NoError(t, err)
	reply := make([]byte, 16)
	c.conn.SetReadDeadline(time.Now().Add(patience))
	_, err = io.ReadFull(c.conn, reply)
	require.NoError(t, err)
	require.Equal(t, uint32(0x67446698), be.Uint32(reply))
	require.Equal(t, cookie, be.Uint64(reply[8:]))
	errno := be.Uint32(reply[4:])
	c.lastData = nil
	if typ == 0 && errno == 0 {
		c.lastData = make([]byte, length)
		_, err = io.ReadFull(c.conn, c.lastData)
		require.NoError(t, err)
	}
	return errno
}

func TestSIGTERMFinishesAndCommitsAcknowledgedWrites(t *testing.T) {
	needTools(t, "qemu-io")
	bin := thinblockBinary(t, "")
	s, dir := startServer(t, bin, map[string]string{"1": "16M"})
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 4M", s.uri("1"))
	s.stop(t)
	// Reopened, the pool holds the writes and checks clean.
	assert.Contains(t, mustRun(t, "check", "--pool", dir), "metadata is consistent")
	s = serve(t, bin, dir)
	runTool(t, "qemu-io", "-f", "raw", "-c", "read -P 0x77 0 4M", s.uri("1"))
	s.stop(t)
}

// Finding 7 of issue 14: every request is validated whole before
// dispatch; unknown or misplaced flags get EINVAL, each refusal is named
// in the log, and the connection stays usable.
func TestRequestValidationOverARealConnection(t *testing.T) {
	needTools(t, "qemu-io")
	bin := thinblockBinary(t, "")
	s, dir := startServer(t, bin, map[string]string{"1": "1M"})
	validationCases(t, dialExport(t, s.sock, "1"))
	// A read-only export refuses writes with EPERM.
	s.stop(t)
	s = serve(t, bin, dir, "--read-only")
	ro := dialExport(t, s.sock, "1")
	assert.Equal(t, uint32(1), ro.request(t, 1, 1, 0, 4, []byte("nope")))
	assert.Equal(t, uint32(1), ro.request(t, 4, 2, 0, 4096, nil), "TRIM")
	runTool(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x67 0 1", "-c", "read -P 0 4 4092", s.uri("1"))
	log := s.stop(t)
	assert.Contains(t, log, "refused WRITE on read-only export")
	s = serve(t, bin, dir)
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 64k", "-c", "read -P 0x5a 64k 64k", s.uri("1"))
	s.stop(t)
}

// validationCases sends requests that fail validation, each answered
// with its errno on a connection that stays usable, on a client of an
// empty writable export of 1 MiB; it leaves "good" at offset 0.
func validationCases(t *testing.T, c *rawClient) {
	cases := []struct {
		name       string
		flags, typ uint16
		off        uint64
		length     uint32
		payload    []byte
		errno      uint32
	}{
		{"a READ with flags 0xffff", 0xffff, 0, 0, 4096, nil, 22},
		{"a WRITE with NO_HOLE (payload still consumed)", 1 << 1, 1, 0, 4, []byte("nope"), 22},
		{"a READ with REQ_ONE", 1 << 3, 0, 0, 4096, nil, 22},
		{"a TRIM with FAST_ZERO", 1 << 4, 4, 0, 4096, nil, 22},
		{"a READ with DF but simple replies", 1 << 2, 0, 0, 4096, nil, 22},
		{"an unknown command", 0, 42, 0, 4096, nil, 22},
		{"BLOCK_STATUS never negotiated", 0, 7, 0, 4096, nil, 22},
		{"a FLUSH with an offset", 0, 3, 4096, 0, nil, 22},
		{"a READ of length 0", 0, 0, 0, 0, nil, 22},
		{"a READ past the end", 0, 0, 1 << 20, 1, nil, 22},
		{"a WRITE past the end", 0, 1, 1<<20 - 2, 4, []byte("long"), 28},
	}
	for i, tc := range cases {
		assert.Equal(t, tc.errno, c.requestFlags(t, tc.flags, tc.typ, uint64(100+i), tc.off, tc.length, tc.payload), tc.name)
	}
	// FUA is valid on every command; the refused WRITE wrote nothing.
	assert.Equal(t, uint32(0), c.requestFlags(t, 1, 0, 1, 0, 4, nil), "FUA on a READ")
	assert.Equal(t, []byte{0, 0, 0, 0}, c.lastData)
	assert.Equal(t, uint32(0), c.request(t, 1, 2, 0, 4, []byte("good")))
	assert.Equal(t, uint32(0), c.request(t, 0, 3, 0, 4, nil))
	assert.Equal(t, "good", string(c.lastData))
}

// procStatus reads a field of /proc/PID/status in bytes (VmRSS, VmHWM).
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB`).FindSubmatch(b)
	require.NotNil(t, m, "no %s in /proc/%d/status", field, pid)
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n << 10
}

// slowReader sends n READs of size bytes on c and never reads a reply.
func slowReader(c *rawClient, n int, size uint32) *rawClient {
	be := binary.BigEndian
	var reqs []byte
	for i := 0; i < n; i++ {
		req := be.AppendUint32(nil, 0x25609513)
		req = be.AppendUint16(req, 0)
		req = be.AppendUint16(req, 0)
		req = be.AppendUint64(req, uint64(i))
		req = be.AppendUint64(req, 0)
		reqs = append(be.AppendUint32(req, size), reqs...)
	}
	go c.conn.Write(reqs) // may block once the server stops reading
	return c
}

// Finding 2 of issue 14: clients that send 200 READs of 32 MiB and never
// read a reply are held back at the per-connection bound instead of
// being served into memory (2.66 GB each before); other clients are
// served meanwhile, and the memory goes back once they close.
func TestSlowReadersStayWithinTheInFlightBound(t *testing.T) {
	needTools(t, "qemu-io", "nbdinfo")
	s, _ := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "64M"})
	slowReadersStayBounded(t, s, func() *rawClient { return dialExport(t, s.sock, "1") },
		func(args ...string) {
			runTool(t, "qemu-io", append(append([]string{"-f", "raw"}, args...), s.uri("1"))...)
		},
		func() string { return runTool(t, "nbdinfo", s.uri("1")) })
}

// slowReadersStayBounded: two slow readers that dial connects to export
// "1" (64 MiB) stay within the per-connection bound while qemuIO (which
// takes qemu-io's commands) and nbdinfo, other clients, are served.
func slowReadersStayBounded(t *testing.T, s *server, dial func() *rawClient, qemuIO func(args ...string), nbdinfo func() string) {
	pid := s.cmd.Process.Pid
	qemuIO("-c", "write -P 0x3c 0 1M")
	base := procStatus(t, pid, "VmRSS")
	slow := []*rawClient{slowReader(dial(), 200, 32<<20), slowReader(dial(), 200, 32<<20)}
	time.Sleep(3 * time.Second)
	// Others are served while the slow ones are stuck.
	qemuIO("-c", "read -P 0x3c 0 1M", "-c", "write -P 0x4d 2M 1M")
	assert.Contains(t, nbdinfo(), "export-size: 67108864")
	time.Sleep(time.Second)
	// Two connections at 64 MiB each, plus a margin of 96 MiB for the
	// runtime, the pooled buffers and the other clients.
	const bound, margin = 2 * 64 << 20, 96 << 20
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("RSS before %d MiB, peak with two slow readers %d MiB", base>>20, peak>>20)
	assert.Less(t, peak, base+bound+margin, "peak RSS %d MiB", peak>>20)
	for _, c := range slow {
		c.conn.Close()
	}
	// The server gives memory back after two idle seconds of its own
	// ticker, which a loaded machine delays.
	var rss int64
	fstest.WaitFor(patience, func() bool { rss = procStatus(t, pid, "VmRSS"); return rss < base+48<<20 })
	t.Logf("RSS after the slow readers closed: %d MiB", rss>>20)
	assert.Less(t, rss, base+48<<20, "memory is given back after the load")
	s.stop(t)
}

// A client idle in the negotiation is disconnected after the timeout.
func TestAClientIdleInTheHandshakeIsDisconnected(t *testing.T) {
	// Long enough that the client below negotiates within it however
	// loaded the machine; the idle client's wait proves the rest.
	const timeout = 3 * time.Second
	s, _ := startServer(t, thinblockBinary(t, ""), map[string]string{"1": "1M"}, "--handshake-timeout", timeout.String())
	// Timed from before the connection exists: the server's clock
	// starts later, so the hang-up cannot come sooner than this says.
	start := time.Now()
	conn, err := net.Dial("unix", s.sock)
	require.NoError(t, err)
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(patience))
	n, err := io.Copy(io.Discard, conn) // the greeting, then EOF
	require.NoError(t, err, "the server closes the connection (not our deadline)")
	assert.Equal(t, int64(18), n, "only the greeting")
	took := time.Since(start)
	assert.GreaterOrEqual(t, took, timeout, "not before the timeout")
	t.Logf("disconnected after %v", took)
	// A client that finishes in time is not affected: idle past the
	// timeout once it has chosen its export, it is still served.
	c := dialExport(t, s.sock, "1")
	time.Sleep(timeout + 500*time.Millisecond)
	assert.Equal(t, uint32(0), c.request(t, 0, 1, 0, 4096, nil))
	assert.Contains(t, s.stop(t), "no export chosen within 3s")
}

// The socket is there only once the server listens: a client that sees
// it connects, whenever it looks (readiness for scripts and services).
func TestTheSocketAppearsOnlyOnceItListens(t *testing.T) {
	bin := thinblockBinary(t, "")
	for i := 0; i < 5; i++ {
		s, _ := startServer(t, bin, map[string]string{"1": "1M"})
		conn, err := net.Dial("unix", s.sock)
		require.NoError(t, err, "round %d: the socket existed before the server listened", i)
		conn.Close()
		s.stop(t)
		names, _ := filepath.Glob(filepath.Dir(s.sock) + "/*.tmp")
		assert.Empty(t, names, "no temporary socket left")
	}
}
