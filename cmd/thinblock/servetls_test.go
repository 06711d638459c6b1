package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/internal/testpki"
)

// tlsCreds makes a CA, a server certificate for localhost and a client
// certificate in qemu's tls-creds-x509 layout, which libnbd reads too.
func tlsCreds(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "creds")
	require.NoError(t, testpki.Write(dir))
	return dir
}

// caOnly makes a directory holding only from's CA certificate: a client
// that trusts the server but has no certificate of its own.
func caOnly(t *testing.T, from string) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(from, testpki.CACert))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, testpki.CACert), data, 0o644))
	return dir
}

// serveTCP serves the pool on a free loopback port.
func serveTCP(t *testing.T, bin, dir string, extra ...string) *server {
	t.Helper()
	s := &server{stderr: &lockedBuffer{}}
	s.cmd = exec.Command(bin, append([]string{"serve", "nbd", "--pool", dir, "--listen", "tcp://127.0.0.1:0"}, extra...)...)
	s.cmd.Stderr = s.stderr
	require.NoError(t, s.cmd.Start())
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			s.cmd.Wait()
		}
	})
	re := regexp.MustCompile(`on tcp://(127\.0\.0\.1:\d+)`)
	fstest.WaitFor(patience, func() bool {
		if m := re.FindStringSubmatch(s.stderr.String()); m != nil {
			s.addr = m[1]
		}
		return s.addr != "" || exited(s.cmd.Process.Pid)
	})
	require.NotEmpty(t, s.addr, "server did not start: %s", s.stderr)
	return s
}

func (s *server) port() string {
	_, port, _ := strings.Cut(s.addr, ":")
	return port
}

// nbds is libnbd's URI of an export over TLS with the credentials in
// dir.
func (s *server) nbds(export, dir string) string {
	return fmt.Sprintf("nbds://localhost:%s/%s?tls-certificates=%s", s.port(), export, dir)
}

// qemuTLS is qemu's arguments for an export over TLS, for qemu-img
// (before the image) and qemu-io.
func (s *server) qemuTLS(export, dir string) []string {
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client",
		"--image-opts", fmt.Sprintf("driver=nbd,host=localhost,port=%s,export=%s,tls-creds=tls0", s.port(), export)}
}

// tlsPool makes a pool with the given volumes and credentials for it.
func tlsPool(t *testing.T, vols map[string]string) (pool, creds string) {
	t.Helper()
	pool = filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "create", "--pool", pool, "--size", "4G")
	for id, size := range vols {
		mustRun(t, "create", "--pool", pool, id, "--size", size)
	}
	return pool, tlsCreds(t)
}

func TestNbdinfoAndNbdcopyOverTLS(t *testing.T) {
	needTools(t, "nbdinfo", "nbdcopy")
	pool, creds := tlsPool(t, map[string]string{"1": "16M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds)
	assert.Contains(t, s.stderr.String(), "TLS required, client certificates checked against the CA")

	out := runTool(t, "nbdinfo", "--json", s.nbds("1", creds))
	var info struct {
		Protocol string `json:"protocol"`
		TLS      bool   `json:"TLS"`
		Exports  []struct {
			Size uint64 `json:"export-size"`
		} `json:"exports"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	assert.True(t, info.TLS, "nbdinfo says TLS: %s", out)
	require.Len(t, info.Exports, 1)
	assert.Equal(t, uint64(16<<20), info.Exports[0].Size)

	// 10 MiB of random data in with nbdcopy (several connections, many
	// requests in flight), and out again.
	data := make([]byte, 10<<20)
	rand.Read(data)
	in := filepath.Join(t.TempDir(), "in.raw")
	require.NoError(t, os.WriteFile(in, data, 0o644))
	runTool(t, "nbdcopy", "--connections=4", "--requests=16", in, s.nbds("1", creds))
	back := filepath.Join(t.TempDir(), "back.raw")
	runTool(t, "nbdcopy", "--connections=4", s.nbds("1", creds), back)
	got, err := os.ReadFile(back)
	require.NoError(t, err)
	require.Len(t, got, 16<<20)
	assert.True(t, bytes.Equal(data, got[:len(data)]), "the data read back over TLS is the data written")
	assert.Equal(t, make([]byte, 6<<20), got[len(data):], "the rest reads as zeros")
	log := s.stop(t)
	assert.NotContains(t, log, "nbd: 127.0.0.1", "no connection problem logged")
	assert.Equal(t, uint64(len(data)), serverBytes(t, log, "wrote"))
}

func TestQemuOverTLS(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	pool, creds := tlsPool(t, map[string]string{"1": "64M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds)
	info := runTool(t, "qemu-img", append([]string{"info"}, s.qemuTLS("1", creds)...)...)
	assert.Contains(t, info, "virtual size: 64 MiB (67108864 bytes)")
	runTool(t, "qemu-io", append(s.qemuTLS("1", creds),
		"-c", "write -P 0x5a 1M 3M", "-c", "write -P 0xa5 60M 64k", "-c", "read -P 0x5a 1M 3M", "-c", "read -P 0 0 1M")...)
	// Out to a local image over TLS, compared byte for byte.
	img := filepath.Join(t.TempDir(), "out.raw")
	runTool(t, "qemu-img", append(append([]string{"convert"}, s.qemuTLS("1", creds)...), "-O", "raw", img)...)
	got, err := os.ReadFile(img)
	require.NoError(t, err)
	require.Len(t, got, 64<<20)
	want := make([]byte, 64<<20)
	copy(want[1<<20:], bytes.Repeat([]byte{0x5a}, 3<<20))
	copy(want[60<<20:], bytes.Repeat([]byte{0xa5}, 64<<10))
	assert.True(t, bytes.Equal(want, got), "qemu-img convert read back what qemu-io wrote")
	s.stop(t)
}

// fio's nbd engine (libnbd) speaks TLS, but cannot be given the
// credentials: libnbd refuses tls-certificates= in a URI unless the
// program allows local files, which fio does not, and as root libnbd's
// default directory is /etc/pki/libnbd, which a test must not write. So
// fio runs against a server that asks no client certificate, without
// checking the server's (tls-verify-peer=false): the transport, under
// fio's verify at depth 16 on four connections, is what is tested.
func TestFioVerifiesOverTLS(t *testing.T) {
	needTools(t, "fio")
	if !strings.Contains(runTool(t, "fio", "--enghelp"), "nbd") {
		t.Skip("this fio has no nbd engine")
	}
	pool, creds := tlsPool(t, map[string]string{"1": "256M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool,
		"--tls-cert", filepath.Join(creds, testpki.ServerCert), "--tls-key", filepath.Join(creds, testpki.ServerKey))
	assert.Contains(t, s.stderr.String(), "TLS required, no client certificates asked")
	out := runTool(t, "fio", "--name=verify", "--ioengine=nbd",
		fmt.Sprintf("--uri=nbds://localhost:%s/1?tls-verify-peer=false", s.port()),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=4", "--size=16M", "--offset_increment=64M",
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--verify_state_save=0")
	assert.Contains(t, out, "err= 0")
	assert.NotContains(t, out, "verify: bad")
	assert.Greater(t, serverBytes(t, s.stop(t), "wrote"), uint64(60<<20))
}

// Under --tls=require with a CA, clients without a certificate, with
// one the CA did not sign, or without TLS are refused; the server goes
// on serving the right ones.
func TestClientsWithoutTheRightCredentialsAreRefused(t *testing.T) {
	needTools(t, "nbdinfo")
	pool, creds := tlsPool(t, map[string]string{"1": "1M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds)

	refused := func(uri, why string) string {
		cmd := exec.Command("nbdinfo", uri)
		cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=1")
		out, err := cmd.CombinedOutput()
		assert.Error(t, err, "%s: %s", why, out)
		assert.NotContains(t, string(out), "export-size", why)
		return string(out)
	}
	refused(s.nbds("1", caOnly(t, creds)), "a client without a certificate")
	// A certificate from another CA, the server's CA trusted.
	other := tlsCreds(t)
	stranger := caOnly(t, creds)
	for _, f := range []string{testpki.ClientCert, testpki.ClientKey} {
		data, err := os.ReadFile(filepath.Join(other, f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(stranger, f), data, 0o600))
	}
	refused(s.nbds("1", stranger), "a client certificate the CA did not sign")
	// A plain client is told TLS is required (libnbd shows the server's
	// message in its debug output; the reply type is checked below).
	out := refused(fmt.Sprintf("nbd://localhost:%s/1", s.port()), "a client without TLS")
	assert.Contains(t, out, "TLS is required")
	assert.Contains(t, runTool(t, "nbdinfo", s.nbds("1", creds)), "export-size: 1048576")
	log := s.stop(t)
	assert.Contains(t, log, "TLS handshake: tls: client didn't provide a certificate")
	assert.Contains(t, log, "TLS handshake: tls: failed to verify certificate")
}

// rawTLS is a raw client's TLS configuration with creds' client
// certificate, trusting its CA.
func rawTLS(t *testing.T, creds string) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(creds, testpki.ClientCert), filepath.Join(creds, testpki.ClientKey))
	require.NoError(t, err)
	ca, err := os.ReadFile(filepath.Join(creds, testpki.CACert))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca))
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "localhost"}
}

// optionReply reads one option reply: the option it answers, its type
// and its data.
func optionReply(t *testing.T, conn net.Conn) (opt, typ uint32, data []byte) {
	t.Helper()
	hdr := make([]byte, 20)
	conn.SetReadDeadline(time.Now().Add(patience))
	_, err := io.ReadFull(conn, hdr)
	require.NoError(t, err)
	be := binary.BigEndian
	require.Equal(t, uint64(0x3e889045565a9), be.Uint64(hdr))
	data = make([]byte, be.Uint32(hdr[16:]))
	_, err = io.ReadFull(conn, data)
	require.NoError(t, err)
	return be.Uint32(hdr[8:]), be.Uint32(hdr[12:]), data
}

// The replies' types of the NBD protocol.
const (
	repAck       = 1
	repErrPolicy = 1<<31 + 2
	repErrInval  = 1<<31 + 3
	repErrTLS    = 1<<31 + 5
)

// startTLS sends NBD_OPT_STARTTLS on a greeted connection and returns
// the TLS connection over it.
func startTLS(t *testing.T, conn net.Conn, cfg *tls.Config) *tls.Conn {
	t.Helper()
	sendOption(t, conn, 5, nil)
	opt, typ, _ := optionReply(t, conn)
	require.Equal(t, uint32(5), opt)
	require.Equal(t, uint32(repAck), typ, "STARTTLS acknowledged")
	tc := tls.Client(conn, cfg)
	require.NoError(t, tc.Handshake())
	return tc
}

// dialTLSExport connects, upgrades to TLS and enters transmission on
// export name with NBD_OPT_EXPORT_NAME.
func dialTLSExport(t *testing.T, addr, name string, cfg *tls.Config) *rawClient {
	t.Helper()
	conn := dialTCP(t, addr)
	greet(t, conn)
	return exportName(t, startTLS(t, conn, cfg), name)
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// The spec's FORCEDTLS mode, option by option, with a raw client.
func TestTLSRequiredAnswersEveryOptionButSTARTTLSAndABORTWithTLSReqd(t *testing.T) {
	pool, creds := tlsPool(t, map[string]string{"1": "1M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds)
	be := binary.BigEndian
	info := be.AppendUint16(append(be.AppendUint32(nil, 1), '1'), 0)
	meta := be.AppendUint32(be.AppendUint32(nil, 0), 0)

	conn := dialTCP(t, s.addr)
	greet(t, conn)
	for _, o := range []struct {
		name string
		code uint32
		data []byte
	}{
		{"LIST", 3, nil}, {"INFO", 6, info}, {"GO", 7, info}, {"STRUCTURED_REPLY", 8, nil},
		{"LIST_META_CONTEXT", 9, meta}, {"SET_META_CONTEXT", 10, meta}, {"an unknown option", 99, nil},
	} {
		sendOption(t, conn, o.code, o.data)
		opt, typ, msg := optionReply(t, conn)
		assert.Equal(t, o.code, opt, o.name)
		assert.Equal(t, uint32(repErrTLS), typ, "%s before STARTTLS: NBD_REP_ERR_TLS_REQD", o.name)
		assert.Contains(t, string(msg), "STARTTLS", o.name)
	}
	// STARTTLS with data is invalid; the connection goes on.
	sendOption(t, conn, 5, []byte("x"))
	_, typ, _ := optionReply(t, conn)
	assert.Equal(t, uint32(repErrInval), typ, "STARTTLS with data")
	tc := startTLS(t, conn, rawTLS(t, creds))
	// Inside TLS every option is answered, and a second STARTTLS is
	// invalid.
	sendOption(t, tc, 3, nil)
	_, typ, data := optionReply(t, tc)
	assert.Equal(t, uint32(2), typ, "LIST answers NBD_REP_SERVER inside TLS")
	assert.Equal(t, "1", string(data[4:5]))
	optionReply(t, tc) // the ACK
	sendOption(t, tc, 5, nil)
	_, typ, _ = optionReply(t, tc)
	assert.Equal(t, uint32(repErrInval), typ, "STARTTLS inside TLS")
	c := exportName(t, tc, "1")
	assert.Equal(t, uint32(0), c.request(t, 1, 1, 0, 5, []byte("hello")))
	assert.Equal(t, uint32(0), c.request(t, 0, 2, 0, 5, nil))
	assert.Equal(t, "hello", string(c.lastData))

	// ABORT before STARTTLS is acknowledged.
	conn = dialTCP(t, s.addr)
	greet(t, conn)
	sendOption(t, conn, 2, nil)
	_, typ, _ = optionReply(t, conn)
	assert.Equal(t, uint32(repAck), typ, "ABORT")

	// EXPORT_NAME before STARTTLS cannot be refused with an error: the
	// server closes the connection without a reply.
	conn = dialTCP(t, s.addr)
	greet(t, conn)
	sendOption(t, conn, 1, []byte("1"))
	conn.SetReadDeadline(time.Now().Add(patience))
	n, err := io.Copy(io.Discard, conn)
	assert.NoError(t, err, "closed by the server, not our deadline")
	assert.Zero(t, n, "nothing sent before the close")

	// A failed handshake after the ACK ends the connection.
	conn = dialTCP(t, s.addr)
	greet(t, conn)
	sendOption(t, conn, 5, nil)
	_, typ, _ = optionReply(t, conn)
	require.Equal(t, uint32(repAck), typ)
	conn.Write([]byte("not a TLS client hello, not at all................"))
	conn.SetReadDeadline(time.Now().Add(patience))
	io.Copy(io.Discard, conn)

	log := s.stop(t)
	assert.Contains(t, log, "client chose an export before STARTTLS, and TLS is required: disconnected")
}

// --tls=on serves plain clients and TLS ones; what a client negotiated
// before STARTTLS is forgotten (the spec), so structured replies asked
// for in plain text are off inside TLS.
func TestTLSOnServesBothAndForgetsWhatWasNegotiatedBefore(t *testing.T) {
	needTools(t, "nbdinfo")
	pool, creds := tlsPool(t, map[string]string{"1": "1M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds, "--tls=on")
	assert.Contains(t, s.stderr.String(), "TLS offered, plain clients served too")
	assert.Contains(t, runTool(t, "nbdinfo", fmt.Sprintf("nbd://localhost:%s/1", s.port())), "export-size: 1048576")
	assert.Contains(t, runTool(t, "nbdinfo", s.nbds("1", creds)), "with TLS")

	conn := dialTCP(t, s.addr)
	greet(t, conn)
	sendOption(t, conn, 8, nil)
	_, typ, _ := optionReply(t, conn)
	require.Equal(t, uint32(repAck), typ, "structured replies, in plain text")
	c := exportName(t, startTLS(t, conn, rawTLS(t, creds)), "1")
	// requestFlags checks for a simple reply's magic.
	assert.Equal(t, uint32(0), c.request(t, 0, 1, 0, 4096, nil))
	s.stop(t)

	// Without credentials, STARTTLS is refused by policy.
	s = serveTCP(t, thinblockBinary(t, ""), pool)
	conn = dialTCP(t, s.addr)
	greet(t, conn)
	sendOption(t, conn, 5, nil)
	_, typ, _ = optionReply(t, conn)
	assert.Equal(t, uint32(repErrPolicy), typ)
	s.stop(t)
}

// The bad-input cases of the plain server, over TLS.
func TestMalformedRequestsOverTLS(t *testing.T) {
	pool, creds := tlsPool(t, map[string]string{"1": "1M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds)
	cfg := rawTLS(t, creds)
	malformedRequests(t, func() *rawClient { return dialTLSExport(t, s.addr, "1", cfg) },
		func() net.Conn {
			// Garbage inside TLS, after the upgrade.
			conn := dialTCP(t, s.addr)
			greet(t, conn)
			return startTLS(t, conn, cfg)
		})
	s.stop(t)
}

func TestRequestValidationOverTLS(t *testing.T) {
	pool, creds := tlsPool(t, map[string]string{"1": "1M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds)
	validationCases(t, dialTLSExport(t, s.addr, "1", rawTLS(t, creds)))
	assert.Contains(t, s.stop(t), "refused READ")
}

// The in-flight bounds hold over TLS too: the reader stops reading a
// connection whose replies are not drained.
func TestSlowReadersOverTLSStayWithinTheInFlightBound(t *testing.T) {
	needTools(t, "qemu-io", "nbdinfo")
	pool, creds := tlsPool(t, map[string]string{"1": "64M"})
	s := serveTCP(t, thinblockBinary(t, ""), pool, "--tls-creds", creds)
	cfg := rawTLS(t, creds)
	slowReadersStayBounded(t, s, func() *rawClient { return dialTLSExport(t, s.addr, "1", cfg) },
		func(args ...string) { runTool(t, "qemu-io", append(s.qemuTLS("1", creds), args...)...) },
		func() string { return runTool(t, "nbdinfo", s.nbds("1", creds)) })
}

// A listener other hosts can reach refuses to serve plain text unless
// --insecure is given; loopback and unix sockets need nothing; bad TLS
// flags are refused with one line before anything is opened.
func TestPlainTextWhereOtherHostsConnectNeedsInsecure(t *testing.T) {
	pool, creds := tlsPool(t, map[string]string{"1": "1M"})
	badCert := filepath.Join(t.TempDir(), "bad.pem")
	require.NoError(t, os.WriteFile(badCert, []byte("not a certificate\n"), 0o644))
	bin := thinblockBinary(t, "")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"0.0.0.0 in plain text", []string{"--listen", "tcp://0.0.0.0:10809"}, "--insecure"},
		{"[::] in plain text", []string{"--listen", "tcp://[::]:10809"}, "--insecure"},
		{"an empty host in plain text", []string{"--listen", "tcp://:10809"}, "--insecure"},
		{"0.0.0.0 with TLS only offered", []string{"--listen", "tcp://0.0.0.0:10809", "--tls-creds", creds, "--tls=on"}, "--tls=on (plain clients still served)"},
		{"a bad --tls", []string{"--tls", "maybe"}, `--tls "maybe": want off, on or require`},
		{"--tls=require without credentials", []string{"--tls=require"}, "--tls=require needs credentials"},
		{"--tls=off with credentials", []string{"--tls=off", "--tls-creds", creds}, "--tls=off with TLS credentials"},
		{"--tls-cert without --tls-key", []string{"--tls-cert", filepath.Join(creds, testpki.ServerCert)}, "--tls-cert and --tls-key go together"},
		{"--tls-creds and --tls-cert", []string{"--tls-creds", creds, "--tls-cert", "x", "--tls-key", "y"}, "not both"},
		{"a credentials directory that does not exist", []string{"--tls-creds", "/nonexistent"}, "/nonexistent/server-cert.pem"},
		{"a certificate that is not one", []string{"--tls-cert", badCert, "--tls-key", badCert}, badCert},
		{"a CA that is not one", []string{"--tls-cert", filepath.Join(creds, testpki.ServerCert),
			"--tls-key", filepath.Join(creds, testpki.ServerKey), "--tls-ca", badCert}, "no PEM certificate"},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			// The binary, with a deadline: a server that wrongly starts
			// fails the test rather than hanging it.
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			var stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "nbd", "--pool", pool}, tc.args...)...)
			cmd.Stderr = &stderr
			cmd.Run()
			errOut, code := stderr.String(), cmd.ProcessState.ExitCode()
			assert.Equal(t, 2, code, errOut)
			assert.Contains(t, errOut, tc.want)
			assert.Equal(t, 1, strings.Count(errOut, "\n"), "one line: %q", errOut)
			assert.NoFileExists(t, filepath.Join(pool, "nbd.sock"))
		})
	}
	for _, tc := range []struct {
		name   string
		listen string
		args   []string
	}{
		{"127.0.0.1", "tcp://127.0.0.1:0", nil},
		{"localhost", "tcp://localhost:0", nil},
		{"::1", "tcp://[::1]:0", nil},
		{"0.0.0.0 with --insecure", "tcp://0.0.0.0:0", []string{"--insecure"}},
		{"0.0.0.0 with TLS required", "tcp://0.0.0.0:0", []string{"--tls-creds", creds}},
		{"a unix socket", "unix://" + filepath.Join(t.TempDir(), "s.sock"), nil},
	} {
		t.Run("served: "+tc.name, func(t *testing.T) {
			if tc.name == "::1" {
				if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
					t.Skipf("no IPv6 loopback here: %v", err)
				} else {
					l.Close()
				}
			}
			var stderr lockedBuffer
			cmd := exec.Command(bin, append([]string{"serve", "nbd", "--pool", pool, "--listen", tc.listen}, tc.args...)...)
			cmd.Stderr = &stderr
			require.NoError(t, cmd.Start())
			s := &server{cmd: cmd, stderr: &stderr}
			fstest.WaitFor(patience, func() bool {
				return strings.Contains(stderr.String(), "serving") || exited(cmd.Process.Pid)
			})
			assert.Contains(t, s.stop(t), "serving 1 volumes over NBD")
		})
	}
}
