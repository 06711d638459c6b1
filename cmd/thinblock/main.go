// Command thinblock manages thin pools: create, resize and inspect pools;
// create, snapshot, delete and list thin volumes; check and repair
// metadata; compare volumes; dump and restore metadata in the XML format
// of thin-provisioning-tools.
//
// Exit status: 0 success, 1 failure (or problems found by check),
// 2 bad input.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/unionmount/unionmount/internal/version"
	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/txn"
)

const usage = `usage: thinblock COMMAND [flags]
       thinblock --version

Pools (a pool is a metadata file and a data file or block device;
--pool DIR means DIR/metadata and DIR/data):
  pool create  --pool DIR --size SIZE [--block-size 64K] [--low-water BLOCKS]
  pool status  --pool DIR [--json]   (exit 1 when out of data space)
  pool resize  --pool DIR --size SIZE
Volumes:
  create   --pool DIR ID --size SIZE
  snapshot --pool DIR ID ORIGIN
  delete   --pool DIR ID...
  ls       --pool DIR [--json]
Metadata:
  check    --pool DIR | --meta FILE   [--repair]
  delta    --pool DIR A B
  dump     --pool DIR | --meta FILE   [-o FILE]
  restore  --pool DIR [-i FILE] [--data-size SIZE]   (default: standard input)

Serving:
  serve nbd  --pool DIR [--listen unix://PATH|tcp://HOST:PORT] [--read-only] [--writable-snapshots] [--accept-rollback] [--skip-check]
             [--max-inflight 256M] [--max-inflight-per-conn 64M] [--handshake-timeout 10s]
             [--daemon] [--pid-file FILE] [--log-file FILE]
  serve fuse --pool DIR MOUNTDIR [--read-only] [--writable-snapshots] [--accept-rollback] [--skip-check] [--stop-timeout 30s]
             [--daemon] [--pid-file FILE] [--log-file FILE]

While a pool is served, create, snapshot, delete, ls, pool status and pool resize
reach the server through its control socket (DIR/control.sock, mode 0600).

SIZE takes K, M, G, T suffixes (powers of 1024). Run "thinblock COMMAND --help" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// errUsage marks bad command lines.
var errUsage = errors.New("usage")

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "version" {
		fmt.Fprintln(stdout, version.String("thinblock"))
		return 0
	}
	cmd, rest := args[0], args[1:]
	if cmd == "pool" {
		if len(rest) == 0 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		cmd, rest = "pool "+rest[0], rest[1:]
	}
	fn, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "thinblock: unknown command %q (see thinblock --help)\n", cmd)
		return 2
	}
	err := fn(rest, stdin, stdout, stderr)
	if err == nil {
		return 0
	}
	var fail exitError
	if errors.As(err, &fail) {
		return int(fail)
	}
	fmt.Fprintf(stderr, "thinblock %s: %v\n", cmd, err)
	return exitCode(err)
}

// exitError ends a command with a status and no further message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func exitCode(err error) int {
	switch {
	case errors.Is(err, errUsage), errors.Is(err, syscall.EINVAL), errors.Is(err, thinblock.ErrNoVolume),
		errors.Is(err, thinblock.ErrVolumeExists), errors.Is(err, txn.ErrNotAPool), errors.Is(err, os.ErrNotExist),
		errors.Is(err, os.ErrExist):
		return 2
	}
	return 1
}

var commands = map[string]func(args []string, stdin io.Reader, stdout, stderr io.Writer) error{
	"pool create": cmdPoolCreate,
	"pool status": cmdPoolStatus,
	"pool resize": cmdPoolResize,
	"create":      cmdCreate,
	"snapshot":    cmdSnapshot,
	"delete":      cmdDelete,
	"ls":          cmdLs,
	"check":       cmdCheck,
	"delta":       cmdDelta,
	"dump":        cmdDump,
	"restore":     cmdRestore,
	"serve":       cmdServe,
}
