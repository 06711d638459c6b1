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
  lower=DIR[:DIR...]   lower layers, topmost first (also lowerdir=); "\:" escapes a colon
  br=DIR=rw:DIR=ro...  aufs branches, leftmost on top (also dirs=); one writable
                       branch, on top; aufs whiteouts unless whiteout= says otherwise
  upper=DIR            the writable layer (also upperdir=); none means read-only
  work=DIR             scratch dir on upper's filesystem (also workdir=);
                       default: a hidden sibling of the upper dir
  redirect_dir=on|follow|off|nofollow
                       on (default): renaming a lower directory works;
                       off/follow/nofollow: it fails with EXDEV, as kernel overlay
  userxattr            keep markers in user.overlay.* xattrs
  ro                   read-only
  nonempty             allow a non-empty mount point
  fsync=0, volatile    do not fsync copied-up files
  passthrough=on|off   FUSE passthrough for open upper files (default on, root only)
  whiteout=auto|chardev|xattr|aufs
                       format of new whiteouts (auto: chardev, else xattr)
  uidmapping=S:M:N[:S:M:N...], gidmapping=...
                       ids S..S+N-1 in the layers show as M..M+N-1; others as 65534
  xattr_permissions=1|2
                       keep owners and modes in an xattr (2: user.containers.override_stat)
  squash_to_root, squash_to_uid=ID, squash_to_gid=ID
                       show every object owned by root / by ID
  static_nlink         show directories with one link
  noacl                refuse POSIX ACLs
  generic mount options (rw, dev, suid, noatime, ...) are accepted

Flags:
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
	opts.CrashAt = os.Getenv("UNIONMOUNT_CRASH_AT")
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

func exitCode(err error) int {
	if errors.Is(err, unionfs.ErrBadOption) {
		return 2
	}
	return 1
}
