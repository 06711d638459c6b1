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

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// errUsage marks bad command lines.
var errUsage = errors.New("usage")

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage(""))
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "version" {
		fmt.Fprintln(stdout, version.String("thinblock"))
		return 0
	}
	name, rest := args[0], args[1:]
	if isGroup(name) {
		// "pool" and "serve" take a subcommand.
		if len(rest) == 0 || rest[0] == "-h" || rest[0] == "--help" {
			fmt.Fprint(stderr, usage(name))
			if len(rest) == 0 {
				return 2
			}
			return 0
		}
		name, rest = name+" "+rest[0], rest[1:]
	}
	c, ok := lookupCommand(name)
	if !ok {
		fmt.Fprintf(stderr, "thinblock: unknown command %q (see thinblock --help)\n", name)
		return 2
	}
	err := c.run(rest, stdin, stdout, stderr)
	if err == nil {
		return 0
	}
	var fail exitError
	if errors.As(err, &fail) {
		return int(fail)
	}
	fmt.Fprintf(stderr, "thinblock %s: %v\n", name, err)
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
