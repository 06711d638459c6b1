package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/thinblock"
)

// MaxRequestLine bounds one request line: a request is small, and a
// client sending more is cut off rather than buffered without end.
const MaxRequestLine = 64 << 10

// Server answers control requests for one pool. Connections are served
// in parallel; the pool serializes its own operations, and the server
// serializes the ones that change the volume list (mu), so that a
// delete's check that nobody holds a volume and the delete itself are
// not interleaved with another control request.
type Server struct {
	Pool *thinblock.Pool
	// Holders names who holds volume id open (an NBD client, a file
	// open through the FUSE export); a delete of a volume with holders
	// is refused with EBUSY naming them. Nil: nobody ever does.
	Holders func(id uint64) []string
	// Changed is called after volumes were created or deleted, so the
	// exports follow. Nil: nothing to do.
	Changed func()
	// Logger gets a line per failed request; nil discards.
	Logger *log.Logger

	mu sync.Mutex // serializes create, snapshot, delete and resize

	connMu   sync.Mutex // guards listener, conns, closing
	listener net.Listener
	conns    map[net.Conn]bool
	closing  bool
	wg       sync.WaitGroup
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("control: server closed")

// Listen makes the control socket at path, mode 0600 (a stale socket
// of an earlier server is replaced).
func Listen(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	old := syscall.Umask(0o077)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// The umask left 0700: nobody needs to execute a socket.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	return l, nil
}

// Serve answers connections on l until Close.
func (s *Server) Serve(l net.Listener) error {
	s.connMu.Lock()
	if s.closing {
		s.connMu.Unlock()
		return ErrClosed
	}
	s.listener, s.conns = l, map[net.Conn]bool{}
	s.connMu.Unlock()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.connMu.Lock()
			closing := s.closing
			s.connMu.Unlock()
			if closing {
				return ErrClosed
			}
			return err
		}
		s.connMu.Lock()
		if s.closing {
			s.connMu.Unlock()
			nc.Close()
			return ErrClosed
		}
		s.conns[nc] = true
		s.wg.Add(1)
		s.connMu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
			s.connMu.Lock()
			delete(s.conns, nc)
			s.connMu.Unlock()
		}()
	}
}

// Close stops accepting, lets the requests being answered finish, and
// closes every connection (which removes the socket).
func (s *Server) Close() error {
	s.connMu.Lock()
	s.closing = true
	if s.listener != nil {
		s.listener.Close()
	}
	for nc := range s.conns {
		// A blocked read ends; a request being answered still answers.
		if cr, ok := nc.(interface{ CloseRead() error }); ok {
			cr.CloseRead()
		} else {
			nc.Close()
		}
	}
	s.connMu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) logf(format string, args ...any) {
	if s.Logger != nil {
		s.Logger.Printf(format, args...)
	}
}

func (s *Server) serveConn(nc net.Conn) {
	defer nc.Close()
	w := bufio.NewWriter(nc)
	reply := func(r Response) bool {
		b, _ := json.Marshal(r)
		w.Write(append(b, '\n'))
		return w.Flush() == nil
	}
	if err := peerAllowed(nc); err != nil {
		reply(Response{Error: err.Error(), Code: codeOf(err)})
		return
	}
	sc := bufio.NewScanner(nc)
	sc.Buffer(make([]byte, 4096), MaxRequestLine)
	for sc.Scan() {
		var req Request
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		err := dec.Decode(&req)
		if err != nil {
			err = invalid("request is not a JSON request object: %v", err)
		} else {
			err = validate(req)
		}
		var resp Response
		if err == nil {
			resp, err = s.dispatch(req)
		}
		if err != nil {
			s.logf("control: %s: %v", req.Op, err)
			resp = Response{Error: err.Error(), Code: codeOf(err)}
		}
		if !reply(resp) {
			return
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		reply(Response{Error: fmt.Sprintf("request line longer than %d bytes", MaxRequestLine), Code: CodeInvalid})
	}
}

// peerAllowed lets in root and the server's own user, as the socket's
// mode 0600 does; checked again here in case the mode was changed.
func peerAllowed(nc net.Conn) error {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("uid %d may not control this pool: %w", cred.Uid, syscall.EACCES)
	}
	return nil
}

// validate checks a request whole: a known operation carrying exactly
// the fields it takes.
func validate(r Request) error {
	has := map[string]bool{"id": r.ID != nil, "origin": r.Origin != nil, "ids": r.IDs != nil, "size": r.Size != 0,
		"name": r.Name != "", "read_only": r.ReadOnly, "writable": r.Writable}
	var want, may []string
	switch r.Op {
	case OpCreate:
		want, may = []string{"id", "size"}, []string{"name", "read_only"}
	case OpSnapshot:
		want, may = []string{"id", "origin"}, []string{"name", "read_only"}
	case OpDelete:
		want = []string{"ids"}
	case OpList, OpStatus, OpTrim:
	case OpResize:
		want = []string{"size"}
	case OpSet:
		want, may = []string{"id"}, []string{"name", "read_only", "writable"}
		if r.ReadOnly && r.Writable {
			return invalid("set: read_only and writable together")
		}
		if !r.ReadOnly && !r.Writable && r.Name == "" {
			return invalid("set changes nothing")
		}
		if err := thinblock.CheckName(r.Name); err != nil {
			return err
		}
	case "":
		return invalid("request names no operation")
	default:
		return invalid("unknown operation %q", r.Op)
	}
	wanted := map[string]bool{}
	for _, f := range want {
		if !has[f] {
			return invalid("%s needs %q", r.Op, f)
		}
		wanted[f] = true
	}
	for _, f := range may {
		wanted[f] = true
	}
	for _, f := range []string{"id", "origin", "ids", "size", "name", "read_only", "writable"} {
		if has[f] && !wanted[f] {
			return invalid("%s takes no %q", r.Op, f)
		}
	}
	if r.Op == OpCreate || r.Op == OpSnapshot {
		if err := thinblock.CheckNewVolumeID(*r.ID); err != nil {
			return err
		}
		if err := thinblock.CheckName(r.Name); err != nil {
			return err
		}
	}
	if r.Op == OpDelete {
		if len(r.IDs) == 0 {
			return invalid("delete needs at least one id")
		}
		seen := map[uint64]bool{}
		for _, id := range r.IDs {
			if seen[id] {
				return invalid("delete names volume %d twice", id)
			}
			seen[id] = true
		}
	}
	return nil
}

// dispatch runs a valid request.
func (s *Server) dispatch(r Request) (Response, error) {
	p := s.Pool
	switch r.Op {
	case OpList:
		vols, err := p.Volumes()
		if err != nil {
			return Response{}, err
		}
		out := make([]Volume, len(vols))
		for i, v := range vols {
			out[i] = FromVolumeInfo(v)
		}
		return Response{Volumes: out}, nil
	case OpStatus:
		st, err := p.Status()
		if err != nil {
			return Response{}, err
		}
		ws := FromStatus(st)
		return Response{Status: &ws}, nil
	case OpTrim:
		n, err := p.Trim()
		return Response{Trimmed: n}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	switch r.Op {
	case OpCreate:
		err = p.CreateVolumeWith(*r.ID, r.Size, thinblock.Attrs{Name: r.Name, ReadOnly: r.ReadOnly})
	case OpSnapshot:
		err = p.SnapshotWith(*r.ID, *r.Origin, thinblock.Attrs{Name: r.Name, ReadOnly: r.ReadOnly})
	case OpDelete:
		err = s.deleteLocked(r.IDs)
	case OpResize:
		err = p.Resize(r.Size)
	case OpSet:
		var c thinblock.AttrChange
		if r.Name != "" {
			c.Name = &r.Name
		}
		if r.ReadOnly || r.Writable {
			ro := r.ReadOnly
			c.ReadOnly = &ro
		}
		err = p.SetAttrs(*r.ID, c)
	}
	if err == nil && r.Op != OpResize && s.Changed != nil {
		s.Changed()
	}
	return Response{}, err
}

// deleteLocked deletes every volume of ids, or none: each must exist and
// be held by nobody. Holders names who holds a volume; the pool's own
// claims (Pool.Hold) decide, in the same lock hold as the delete, so an
// export chosen or a file opened after the check here still refuses it.
// Preconditions: s.mu is held.
func (s *Server) deleteLocked(ids []uint64) error {
	for _, id := range ids {
		if _, err := s.Pool.Details(id); err != nil {
			return err
		}
		if hs := s.holders(id); len(hs) > 0 {
			return fmt.Errorf("volume %d is in use: %s: %w", id, strings.Join(hs, "; "), syscall.EBUSY)
		}
	}
	err := s.Pool.DeleteVolumes(ids)
	var held *thinblock.HeldError
	if errors.As(err, &held) {
		// Claimed since the check above: name the holders as it would.
		if hs := s.holders(held.ID); len(hs) > 0 {
			held.Holders = hs
		}
	}
	return err
}

func (s *Server) holders(id uint64) []string {
	if s.Holders == nil {
		return nil
	}
	return s.Holders(id)
}
