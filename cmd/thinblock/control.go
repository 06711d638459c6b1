package main

import (
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/control"
	"github.com/unionmount/unionmount/thinblock/nbd"
)

// controlListener is a control socket that exists but does not answer
// yet: a command that connects waits in its backlog until serve.
type controlListener struct {
	net.Listener
	path string
}

// listenControl makes the control socket. A server makes it before what
// it serves shows (a mount, an NBD socket), so whoever sees that can run
// the volume commands at once.
func listenControl(pf *poolFlags) (*controlListener, error) {
	meta, _, err := pf.paths()
	if err != nil {
		return nil, err
	}
	path := controlPath(meta)
	l, err := control.Listen(path)
	if err != nil {
		return nil, err
	}
	return &controlListener{Listener: l, path: path}, nil
}

// serve answers the socket until the returned function is called, which
// also removes it.
func (l *controlListener) serve(p *thinblock.Pool, holders func(uint64) []string, changed func(), logger *log.Logger) func() {
	srv := &control.Server{Pool: p, Holders: holders, Changed: changed, Logger: logger}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l.Listener); err != control.ErrClosed {
			logger.Printf("control socket %s: %v", l.path, err)
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { srv.Close(); <-done }) }
}

// nbdHolders names the NBD clients that have volume id open.
func nbdHolders(srv *nbd.Server) func(id uint64) []string {
	return func(id uint64) []string {
		var out []string
		for _, nc := range srv.Clients(fmt.Sprint(id)) {
			out = append(out, "NBD client "+describePeer(nc))
		}
		return out
	}
}

// describePeer names the other end of a connection: for a unix socket
// the process (SO_PEERCRED), otherwise its address.
func describePeer(nc net.Conn) string {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if uc, ok := nc.(*net.UnixConn); ok {
		if raw, err := uc.SyscallConn(); err == nil {
			var cred *unix.Ucred
			raw.Control(func(fd uintptr) { cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
			if cred != nil && cred.Pid > 0 {
				return describeProcess(int(cred.Pid))
			}
		}
	}
	return nc.RemoteAddr().String()
}
