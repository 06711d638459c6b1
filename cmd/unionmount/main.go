// Command unionmount mounts a union of directories with kernel overlayfs
// semantics over FUSE.
//
//	unionmount -o lower=A:B,upper=U[,work=W] MOUNTPOINT
//	mount -t fuse.unionmount none MOUNTPOINT -o lowerdir=A:B,upperdir=U,workdir=W
//
// It owns the command line, the mount(8) helper protocol (return once the
// mount is ready, keep serving in the background) and exit codes:
// 0 success, 1 a failure of the system, 2 bad input.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/unionmount/unionmount/internal/version"
	"github.com/unionmount/unionmount/unionfs"
)

const usage = `usage: unionmount [-f] [-d] -o OPTIONS [SOURCE] MOUNTPOINT
       unionmount convert --to overlay|aufs DIR       (see unionmount convert --help)
       unionmount apply LAYER.tar DIR                 (see unionmount apply --help)
       unionmount status [--json]                     the mounted unions, their layers and daemons
       unionmount --version

Mounts a union of directories at MOUNTPOINT.

Options (-o, comma-separated, may be repeated):
`

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "convert":
			return runConvert(args[1:], os.Stdout, stderr)
		case "apply":
			return runApply(args[1:], os.Stdout, stderr)
		case "status":
			return runStatus(args[1:], os.Stdout, stderr)
		case "branch":
			return runBranch(args[1:], os.Stdout, stderr)
		}
	}
	flags := pflag.NewFlagSet("unionmount", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	var (
		optLists   []string
		foreground = flags.BoolP("foreground", "f", false, "stay in the foreground")
		debug      = flags.BoolP("debug", "d", false, "trace FUSE operations (implies -f)")
		help       = flags.BoolP("help", "h", false, "show this help")
		showVer    = flags.Bool("version", false, "print the version and exit")
	)
	flags.StringArrayVarP(&optLists, "options", "o", nil, "mount options")
	flags.Usage = func() {
		fmt.Fprint(stderr, usage)
		fmt.Fprint(stderr, unionfs.OptionsHelp())
		fmt.Fprint(stderr, "\nFlags:\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		fmt.Fprintf(stderr, "unionmount: %v\n", err)
		return 2
	}
	if *help {
		flags.Usage()
		return 0
	}
	if *showVer {
		fmt.Println(version.String("unionmount"))
		return 0
	}
	var source, mountpoint string
	switch rest := flags.Args(); len(rest) {
	case 1:
		mountpoint = rest[0]
	case 2:
		source, mountpoint = rest[0], rest[1]
	default:
		fmt.Fprintf(stderr, "unionmount: want [SOURCE] MOUNTPOINT, got %d arguments (see --help)\n", len(rest))
		return 2
	}
	opts, err := unionfs.ParseOptions(optLists)
	if err == nil {
		err = opts.Validate(mountpoint)
	}
	if err != nil {
		fmt.Fprintf(stderr, "unionmount: %v\n", err)
		return exitCode(err)
	}
	// Crash tests stop the server at a named point (unionfs.CrashPoints).
	if at := os.Getenv("UNIONMOUNT_CRASH_AT"); at != "" {
		opts.Crash = func(point string) {
			if point == at {
				fmt.Fprintf(stderr, "unionmount: crash point %s reached: exiting\n", point)
				os.Exit(crashExitCode)
			}
		}
	}
	if opts.FsName == "" && source != "" && source != "none" {
		opts.FsName = source
	}
	if *debug {
		opts.Debug = true
		*foreground = true
	}
	if *foreground || isDaemon() {
		return serve(mountpoint, optLists, opts, stderr)
	}
	return daemonize(stderr)
}

// crashExitCode is the status a crash point (UNIONMOUNT_CRASH_AT) exits
// with, so a crash test tells it from other endings.
const crashExitCode = 86

func exitCode(err error) int {
	if errors.Is(err, unionfs.ErrBadOption) {
		return 2
	}
	return 1
}
