package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// tlsFlags are serve nbd's TLS options: the mode, the credentials (a
// directory in qemu's tls-creds-x509 layout, or three files), and the
// consent to serve in plain text where other hosts can connect.
type tlsFlags struct {
	mode           string
	creds          string
	cert, key, ca  string
	insecure       bool
	modeWasDefault bool
}

func (f *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.mode, "tls", "", "off, on (offered; plain clients still served) or require (default: require when credentials are given, else off)")
	fs.StringVar(&f.creds, "tls-creds", "", "directory with ca-cert.pem, server-cert.pem and server-key.pem (qemu's tls-creds-x509 layout); clients must present a certificate the CA signed")
	fs.StringVar(&f.cert, "tls-cert", "", "server certificate (PEM), with --tls-key")
	fs.StringVar(&f.key, "tls-key", "", "server private key (PEM)")
	fs.StringVar(&f.ca, "tls-ca", "", "CA certificate (PEM): clients must present a certificate it signed")
	fs.BoolVar(&f.insecure, "insecure", false, "serve in plain text on an address other hosts can reach")
}

// tlsSetup is what the TLS flags asked for; config is nil for plain
// text.
type tlsSetup struct {
	config        *tls.Config
	require       bool
	verifyClients bool
}

// describe says how clients are served, for the start-up line.
func (s tlsSetup) describe() string {
	switch {
	case s.config == nil:
		return "plain text"
	case s.require && s.verifyClients:
		return "TLS required, client certificates checked against the CA"
	case s.require:
		return "TLS required, no client certificates asked"
	}
	return "TLS offered, plain clients served too"
}

// badInput is bad input whose message stands alone: exit status 2.
type badInput string

func (e badInput) Error() string        { return string(e) }
func (e badInput) Is(target error) bool { return target == errUsage }

// load checks the TLS flags together and loads the credentials.
func (f *tlsFlags) load() (tlsSetup, error) {
	files := f.cert != "" || f.key != "" || f.ca != ""
	if f.creds != "" && files {
		return tlsSetup{}, badInput("--tls-creds or --tls-cert/--tls-key/--tls-ca, not both")
	}
	if f.creds != "" {
		f.cert, f.key, f.ca = filepath.Join(f.creds, "server-cert.pem"), filepath.Join(f.creds, "server-key.pem"), filepath.Join(f.creds, "ca-cert.pem")
	} else if files && (f.cert == "" || f.key == "") {
		return tlsSetup{}, badInput("--tls-cert and --tls-key go together (and --tls-ca needs them)")
	}
	have := f.cert != ""
	mode := f.mode
	if mode == "" {
		mode = "off"
		if have {
			mode = "require"
		}
	}
	switch mode {
	case "off":
		if have {
			return tlsSetup{}, badInput("--tls=off with TLS credentials: drop one or the other")
		}
		return tlsSetup{}, nil
	case "on", "require":
		if !have {
			return tlsSetup{}, badInput(fmt.Sprintf("--tls=%s needs credentials: --tls-creds DIR, or --tls-cert and --tls-key", mode))
		}
	default:
		return tlsSetup{}, badInput(fmt.Sprintf("--tls %q: want off, on or require", f.mode))
	}
	pair, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return tlsSetup{}, badInput(fmt.Sprintf("server certificate %s and key %s: %v", f.cert, f.key, err))
	}
	if now := time.Now(); now.After(pair.Leaf.NotAfter) || now.Before(pair.Leaf.NotBefore) {
		return tlsSetup{}, badInput(fmt.Sprintf("server certificate %s is valid from %s to %s, not now",
			f.cert, pair.Leaf.NotBefore.Format(time.DateTime), pair.Leaf.NotAfter.Format(time.DateTime)))
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	setup := tlsSetup{config: cfg, require: mode == "require"}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return tlsSetup{}, badInput(fmt.Sprintf("CA certificate: %v", err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return tlsSetup{}, badInput(fmt.Sprintf("CA certificate %s: no PEM certificate in it", f.ca))
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
		setup.verifyClients = true
	}
	return setup, nil
}

// listenAddr is a parsed --listen.
type listenAddr struct {
	unix string       // the socket's path, or
	tcp  *net.TCPAddr // the address resolved, as it will be bound
}

func parseListen(addr string) (listenAddr, error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		return listenAddr{unix: strings.TrimPrefix(addr, "unix://")}, nil
	case strings.HasPrefix(addr, "tcp://"):
		a, err := net.ResolveTCPAddr("tcp", strings.TrimPrefix(addr, "tcp://"))
		if err != nil {
			return listenAddr{}, badInput(fmt.Sprintf("--listen %s: %v", addr, err))
		}
		return listenAddr{tcp: a}, nil
	}
	return listenAddr{}, fmt.Errorf("%w: --listen %q: want unix://PATH or tcp://HOST:PORT", errUsage, addr)
}

// reachable says whether other hosts can connect: a TCP address off
// the loopback network (the unspecified 0.0.0.0 and :: included).
func (a listenAddr) reachable() bool {
	return a.tcp != nil && !a.tcp.IP.IsLoopback()
}

// checkExposure refuses to serve plain-text clients where other hosts
// can connect, unless --insecure says so.
func checkExposure(addr string, a listenAddr, t tlsSetup, insecure bool) error {
	if !a.reachable() || t.require || insecure {
		return nil
	}
	why := "without TLS"
	if t.config != nil {
		why = "with --tls=on (plain clients still served)"
	}
	return badInput(fmt.Sprintf("--listen %s lets other hosts connect, and %s anyone who reaches it could read and write every volume: "+
		"give --tls-creds DIR (TLS is then required), or --insecure to serve in plain text anyway", addr, why))
}
