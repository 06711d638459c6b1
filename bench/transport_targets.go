package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/unionmount/unionmount/internal/testpki"
)

// The transport rows: thinblock served over loopback TCP, in plain text
// and over TLS, so that what TLS costs is known. They measure reads of
// provisioned blocks only, where the transport is most of the work.
var transportWorkloads = map[string]bool{"randread-4k-qd16": true, "seqread-1m": true}

// transportTarget serves thinblock on 127.0.0.1, with TLS or without.
type transportTarget struct {
	name string
	tls  bool
}

func (t *transportTarget) Name() string   { return t.name }
func (t *transportTarget) Family() Family { return Block }

func (t *transportTarget) Skip(cfg *Config) string {
	if cfg.ThinblockBin == "" {
		return "no thinblock binary given"
	}
	return ""
}

// NotFor leaves out what the transport rows do not measure.
func (t *transportTarget) NotFor(workload string) string {
	if !transportWorkloads[workload] {
		return "transport rows measure 4 KiB random and 1 MiB sequential reads only"
	}
	return ""
}

func (t *transportTarget) Setup(env *Env) (*Instance, error) {
	dir, err := os.MkdirTemp(env.cfg.Dir, t.name+"-")
	if err != nil {
		return nil, err
	}
	inst, err := t.setup(env, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	inner := inst.teardown
	inst.teardown = func() error {
		err := inner()
		if rerr := os.RemoveAll(dir); err == nil {
			err = rerr
		}
		return err
	}
	return inst, nil
}

func (t *transportTarget) setup(env *Env, dir string) (*Instance, error) {
	bin := env.cfg.ThinblockBin
	pool := filepath.Join(dir, "pool")
	if _, err := runCmd(bin, "pool", "create", "--pool", pool, "--size", fmt.Sprint(4*env.size.blockBytes)); err != nil {
		return nil, err
	}
	if _, err := runCmd(bin, "create", "--pool", pool, "1", "--size", env.size.blockSize); err != nil {
		return nil, err
	}
	args := []string{"serve", "nbd", "--pool", pool, "--listen", "tcp://127.0.0.1:0"}
	scheme, query := "nbd", ""
	if t.tls {
		creds := filepath.Join(dir, "creds")
		if err := testpki.Write(creds); err != nil {
			return nil, err
		}
		// No client certificates: fio's nbd engine cannot be given
		// one (libnbd refuses tls-certificates= in its URI), so it
		// does not check the server's either. The handshake is once
		// per connection; what is measured is the data's encryption.
		args = append(args, "--tls-cert", filepath.Join(creds, testpki.ServerCert), "--tls-key", filepath.Join(creds, testpki.ServerKey))
		scheme, query = "nbds", "?tls-verify-peer=false"
	}
	d, addr, err := startTCPDaemon(bin, args...)
	if err != nil {
		return nil, err
	}
	return &Instance{URI: fmt.Sprintf("%s://%s/1%s", scheme, addr, query), thin: true, teardown: d.stop}, nil
}

// startTCPDaemon starts a thinblock server on a TCP port it chooses and
// returns the address it says it serves on.
func startTCPDaemon(name string, args ...string) (*daemon, string, error) {
	cmd := exec.Command(name, args...)
	var stderr syncBuilder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	re := regexp.MustCompile(`on tcp://(\S+)`)
	for deadline := time.Now().Add(daemonPatience); time.Now().Before(deadline); {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			return &daemon{cmd: cmd}, m[1], nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, "", fmt.Errorf("%s did not start serving: %s", name, lastLines(stderr.String(), 3))
}

// syncBuilder is a server's stderr, read while it is written.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
