package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/unionmount/unionmount/internal/mountstate"
	"github.com/unionmount/unionmount/unionfs"
)

const branchUsage = `usage: unionmount branch add [--prepend] MOUNTPOINT DIR[=ro|rr][+wh]
       unionmount branch del MOUNTPOINT DIR
       unionmount branch list MOUNTPOINT

Changes the branches of a mounted union, as aufs's
"mount -o remount,append:DIR=ro+wh" and "remount,del:DIR" do (a FUSE
remount never reaches the daemon). add appends a read-only branch at the
bottom (with --prepend: on top, where no writable branch holds the top,
as remount,prepend:DIR does); del removes a read-only branch, and fails with "busy" while
anything on the mount uses it (an open file, a current directory). The
daemon is reached through the control socket its status record names.
Each prints the union's branches afterwards, topmost first.

Flags:
`

// branchRequest is one request on a daemon's control socket: a JSON
// line, answered by a branchReply line.
type branchRequest struct {
	Op     string `json:"op"` // add, del or list
	Branch string `json:"branch,omitempty"`
	// Prepend adds on top rather than at the bottom.
	Prepend bool `json:"prepend,omitempty"`
}

type branchReply struct {
	Error    string   `json:"error,omitempty"`
	Busy     bool     `json:"busy,omitempty"`
	Branches []string `json:"branches,omitempty"`
}

// runBranch is `unionmount branch`.
func runBranch(args []string, stdout, stderr io.Writer) int {
	flags := pflag.NewFlagSet("unionmount branch", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	prepend := flags.Bool("prepend", false, "add on top rather than at the bottom")
	help := flags.BoolP("help", "h", false, "show this help")
	flags.Usage = func() {
		fmt.Fprint(stderr, branchUsage)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		fmt.Fprintf(stderr, "unionmount branch: %v\n", err)
		return 2
	}
	if *help {
		flags.Usage()
		return 0
	}
	rest := flags.Args()
	req, mnt, err := branchArgs(rest)
	if err == nil && *prepend && req.Op != "add" {
		err = errors.New("--prepend goes with add")
	}
	if err != nil {
		fmt.Fprintf(stderr, "unionmount branch: %v (see --help)\n", err)
		return 2
	}
	req.Prepend = *prepend
	control, err := controlOf(mnt)
	if err != nil {
		fmt.Fprintf(stderr, "unionmount branch: %v\n", err)
		return 1
	}
	reply, err := askDaemon(control, req)
	if err != nil {
		fmt.Fprintf(stderr, "unionmount branch: %s: %v\n", mnt, err)
		return 1
	}
	if reply.Error != "" {
		fmt.Fprintf(stderr, "unionmount branch: %s\n", reply.Error)
		return 1
	}
	for _, b := range reply.Branches {
		fmt.Fprintln(stdout, b)
	}
	return 0
}

// branchArgs checks the command line whole: the operation, the mount
// point and the branch.
func branchArgs(rest []string) (branchRequest, string, error) {
	if len(rest) == 0 {
		return branchRequest{}, "", errors.New("no operation: want add, del or list")
	}
	req := branchRequest{Op: rest[0]}
	switch {
	case req.Op == "list" && len(rest) == 2:
	case (req.Op == "add" || req.Op == "del") && len(rest) == 3:
		req.Branch = rest[2]
		if req.Op == "add" {
			if _, err := unionfs.ParseBranch(req.Branch, false); err != nil {
				return req, "", err
			}
		}
	case req.Op == "add" || req.Op == "del":
		return req, "", fmt.Errorf("%s takes MOUNTPOINT and DIR", req.Op)
	case req.Op == "list":
		return req, "", errors.New("list takes MOUNTPOINT")
	default:
		return req, "", fmt.Errorf("unknown operation %q: want add, del or list", req.Op)
	}
	return req, rest[1], nil
}

// controlOf finds the control socket of the union mounted at mnt.
func controlOf(mnt string) (string, error) {
	abs, err := filepath.Abs(mnt)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("mount point %s: %w", mnt, err)
	}
	mounts, err := mountstate.List(mountstate.Dir(), fsType)
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		if m.Mountpoint != abs {
			continue
		}
		if m.Record == nil || m.Record.Control == "" {
			return "", fmt.Errorf("%s: its daemon offers no control socket (another user's, or an older version)", abs)
		}
		return m.Record.Control, nil
	}
	return "", fmt.Errorf("%s: no union is mounted there", abs)
}

// askDaemon sends one request and reads its reply.
func askDaemon(control string, req branchRequest) (branchReply, error) {
	var reply branchReply
	conn, err := net.DialTimeout("unix", control, 5*time.Second)
	if err != nil {
		return reply, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return reply, err
	}
	if err := json.NewDecoder(conn).Decode(&reply); err != nil {
		return reply, fmt.Errorf("reading the daemon's reply: %w", err)
	}
	return reply, nil
}

// serveControl listens on the control socket at path (mode 0600) and
// serves branch requests for ufs, one at a time; record rewrites the
// status record after a change. stop closes it.
func serveControl(path string, ufs *unionfs.FS, record func() error, logger *log.Logger) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	os.Remove(path) // a daemon killed without its clean-up
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			serveBranchConn(conn, ufs, record, logger)
		}
	}()
	return func() {
		ln.Close()
		<-done
		os.Remove(path)
	}, nil
}

// serveBranchConn validates one request whole, then carries it out.
func serveBranchConn(conn net.Conn, ufs *unionfs.FS, record func() error, logger *log.Logger) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	var req branchRequest
	var reply branchReply
	line, err := bufio.NewReader(io.LimitReader(conn, 64<<10)).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	var b unionfs.Branch
	switch {
	case err != nil:
		reply.Error = fmt.Sprintf("bad request: %v", err)
	case req.Op == "add":
		if b, err = unionfs.ParseBranch(req.Branch, false); err != nil {
			reply.Error = err.Error()
		}
	case req.Op == "del":
		if req.Branch == "" {
			reply.Error = "del needs a branch"
		}
	case req.Op == "list":
	default:
		reply.Error = fmt.Sprintf("unknown operation %q", req.Op)
	}
	if reply.Error == "" {
		switch req.Op {
		case "add":
			err = ufs.AddBranch(b, req.Prepend)
		case "del":
			err = ufs.DelBranch(req.Branch)
		}
		if err != nil {
			reply.Error = err.Error()
			reply.Busy = errors.Is(err, syscall.EBUSY)
		} else if req.Op != "list" {
			logger.Printf("branch %s %s", req.Op, req.Branch)
			if err := record(); err != nil {
				logger.Printf("status record not rewritten: %v", err)
			}
		}
		for _, b := range ufs.Branches() {
			reply.Branches = append(reply.Branches, b.String())
		}
	}
	json.NewEncoder(conn).Encode(reply)
}
