package main

import (
	"fmt"
	"io"
	"strings"
)

// command is one thinblock command: its name ("pool create"), what it
// takes, one line of documentation, and its function. The overview of
// `thinblock --help`, each group's help and each command's own --help
// come from commands().
type command struct {
	group, name, synopsis, doc string
	run                        func(args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

// groups are the overview's sections, in order; the "pool" and "serve"
// groups are also command words that take a subcommand.
var groups = []struct{ name, title string }{
	{"pool", "Pools (a pool is a metadata file and a data file or block device;\n--pool DIR means DIR/metadata and DIR/data):"},
	{"volumes", "Volumes:"},
	{"metadata", "Metadata:"},
	{"serve", "Serving:"},
}

// commands returns the command table (a function: the commands' own
// help reads the table, which would otherwise refer to itself).
func commands() []command {
	return []command{
		{"pool", "pool create", "--pool DIR --size SIZE [--block-size 64K] [--low-water BLOCKS]", "make a pool: metadata and a sparse data file", cmdPoolCreate},
		{"pool", "pool status", "--pool DIR [--json]", "free space, low-water mark, transaction; exits 1 when out of data space", cmdPoolStatus},
		{"pool", "pool resize", "--pool DIR --size SIZE", "grow the pool's data", cmdPoolResize},
		{"pool", "pool trim", "--pool DIR", "punch every unused data block out of a file-backed data device (freed blocks are punched at each commit anyway)", cmdPoolTrim},
		{"volumes", "create", "--pool DIR ID --size SIZE [--name NAME] [--read-only]", "make thin volume ID: no space is used until it is written", cmdCreate},
		{"volumes", "snapshot", "--pool DIR ID ORIGIN [--name NAME] [--read-only]", "make volume ID a copy-on-write snapshot of ORIGIN, in O(1); writable unless --read-only", cmdSnapshot},
		{"volumes", "delete", "--pool DIR ID...", "remove the volumes (all or none); blocks no other volume shares are freed", cmdDelete},
		{"volumes", "set", "--pool DIR ID [--name NAME] [--read-only|--writable]", "change a volume's attributes", cmdSet},
		{"volumes", "ls", "--pool DIR [--json]", "volumes with size, mapped, exclusive and shared blocks (as thin_ls), read-only, origin and name", cmdLs},
		{"metadata", "check", "--pool DIR | --meta FILE [--repair]", "verify the metadata; --repair rebuilds the space map", cmdCheck},
		{"metadata", "delta", "--pool DIR A B", "ranges where volumes A and B differ, as thin_delta", cmdDelta},
		{"metadata", "dump", "--pool DIR | --meta FILE [-o FILE]", "the metadata as thin_dump's XML", cmdDump},
		{"metadata", "restore", "--pool DIR [-i FILE] [--data-size SIZE]", "make a pool's metadata from thin_dump's XML (default: standard input)", cmdRestore},
		{"serve", "serve nbd", "--pool DIR [--listen unix://PATH|tcp://HOST:PORT] [--tls-creds DIR] [--daemon] [--low-water-command CMD] [--no-space error|queue[:TIMEOUT]] [flags]", "serve every volume over NBD until SIGTERM, with the control socket DIR/control.sock", func(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
			return serveNBD(args, stderr)
		}},
		{"serve", "serve fuse", "--pool DIR MOUNTDIR [--daemon] [--low-water-command CMD] [--no-space error|queue[:TIMEOUT]] [flags]", "serve every volume as a file in MOUNTDIR (for losetup) until SIGTERM, with the control socket DIR/control.sock", func(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
			return serveFUSE(args, stderr)
		}},
	}
}

func lookupCommand(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func isGroup(word string) bool { return word == "pool" || word == "serve" }

// usage is the overview, or one group's part of it.
func usage(group string) string {
	var b strings.Builder
	b.WriteString("usage: thinblock COMMAND [flags]\n       thinblock --version\n")
	for _, g := range groups {
		if group != "" && g.name != group {
			continue
		}
		fmt.Fprintf(&b, "\n%s\n", g.title)
		for _, c := range commands() {
			if c.group == g.name {
				fmt.Fprintf(&b, "  %-12s %s\n  %-12s   %s\n", c.name, c.synopsis, "", c.doc)
			}
		}
	}
	if group == "" || group == "volumes" {
		b.WriteString("\nWhile a pool is served, create, snapshot, delete, ls, pool status and pool\nresize reach the server through its control socket (DIR/control.sock).\n")
	}
	b.WriteString("\nSIZE takes K, M, G, T suffixes (powers of 1024). Run \"thinblock COMMAND --help\" for a command's flags.\n")
	return b.String()
}

// commandUsage is the head of a command's own --help.
func commandUsage(name string) string {
	c, ok := lookupCommand(name)
	if !ok {
		return "usage: thinblock " + name + " [flags]\n"
	}
	return fmt.Sprintf("usage: thinblock %s %s\n\n%s.\n\nFlags:\n", c.name, c.synopsis, strings.ToUpper(c.doc[:1])+c.doc[1:])
}
