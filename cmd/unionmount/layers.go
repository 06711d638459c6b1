package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/tarlayer"
	"github.com/unionmount/unionmount/whiteout"
)

const convertUsage = `usage: unionmount convert --to overlay|aufs [--whiteout chardev|xattr] [--userxattr] DIR

Rewrites the whiteouts and opaque markers of the layer directory DIR:
--to aufs turns overlay whiteouts (device nodes or xattr files) and opaque
xattrs into .wh.NAME files and .wh..wh..opq; --to overlay turns those back
(and drops aufs's own .wh..wh.plnk/.orph/.aufs). Each marker is replaced
so that the layer hides the same names at every moment.

`

const applyUsage = `usage: unionmount apply [--whiteout chardev|xattr|aufs] [--userxattr] LAYER.tar[.gz] DIR
       unionmount apply --flatten LAYER.tar[.gz] DIR

Applies an OCI or Docker layer tarball onto the layer directory DIR: its
.wh.NAME entries become whiteouts and .wh..wh..opq opaque directories in
the chosen format (default chardev, as kernel overlay writes).

With --flatten, DIR is a full tree (the filesystem of a thin volume that
holds the layers below, as Docker's devicemapper driver keeps them): a
whiteout deletes what it names, an opaque marker deletes what its
directory held before, and nothing of the layer format stays behind.

A tarball naming anything outside DIR (../, an absolute name, a path
under a symlink) is refused before anything is written.

`

// layerFlags are the options convert and apply share.
type layerFlags struct {
	flags     *pflag.FlagSet
	whiteout  *string
	userXattr *bool
}

func newLayerFlags(name, usage, defaultWhiteout string, stderr io.Writer) *layerFlags {
	f := &layerFlags{flags: pflag.NewFlagSet("unionmount "+name, pflag.ContinueOnError)}
	f.flags.SetOutput(stderr)
	f.whiteout = f.flags.String("whiteout", defaultWhiteout, "whiteout format to write")
	f.userXattr = f.flags.Bool("userxattr", false, "write overlay markers as user.overlay.* (rootless) instead of trusted.overlay.*")
	f.flags.Usage = func() {
		fmt.Fprint(stderr, usage)
		f.flags.PrintDefaults()
	}
	return f
}

func (f *layerFlags) markers() whiteout.Markers {
	if *f.userXattr {
		return whiteout.Markers{Prefix: whiteout.UserPrefix}
	}
	return whiteout.Markers{Prefix: whiteout.TrustedPrefix}
}

// layerDir opens a layer directory argument.
func layerDir(p string) (int, error) {
	st, err := os.Lstat(p)
	if err != nil {
		return -1, fmt.Errorf("%w: layer dir %s: %v", errUsage, p, errors.Unwrap(err))
	}
	if !st.IsDir() {
		return -1, fmt.Errorf("%w: layer dir %s is not a directory", errUsage, p)
	}
	return unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// errUsage marks mistakes in the command line (exit 2).
var errUsage = errors.New("bad usage")

func runConvert(args []string, stdout, stderr io.Writer) int {
	f := newLayerFlags("convert", convertUsage, "chardev", stderr)
	to := f.flags.String("to", "", "overlay or aufs")
	if err := f.flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return layerFail(stderr, "convert", fmt.Errorf("%w: %v", errUsage, err))
	}
	if f.flags.NArg() != 1 {
		return layerFail(stderr, "convert", fmt.Errorf("%w: want one layer DIR, got %d arguments", errUsage, f.flags.NArg()))
	}
	var format whiteout.Format
	switch *to {
	case "aufs":
		format = whiteout.Aufs
	case "overlay":
		switch *f.whiteout {
		case "chardev":
			format = whiteout.Chardev
		case "xattr":
			format = whiteout.Xattr
		default:
			return layerFail(stderr, "convert", fmt.Errorf("%w: --whiteout=%q: overlay whiteouts are chardev or xattr", errUsage, *f.whiteout))
		}
	default:
		return layerFail(stderr, "convert", fmt.Errorf("%w: --to=%q: want overlay or aufs", errUsage, *to))
	}
	root, err := layerDir(f.flags.Arg(0))
	if err != nil {
		return layerFail(stderr, "convert", err)
	}
	defer unix.Close(root)
	st, err := f.markers().Convert(root, format)
	if err != nil {
		return layerFail(stderr, "convert", err)
	}
	fmt.Fprintf(stdout, "%s: %d whiteouts and %d opaque markers rewritten as %s, %d aufs-internal entries dropped\n",
		f.flags.Arg(0), st.Whiteouts, st.Opaques, format, st.Dropped)
	return 0
}

func runApply(args []string, stdout, stderr io.Writer) int {
	f := newLayerFlags("apply", applyUsage, "chardev", stderr)
	flatten := f.flags.Bool("flatten", false, "apply onto a full tree: whiteouts and opaque markers delete what they hide")
	if err := f.flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return layerFail(stderr, "apply", fmt.Errorf("%w: %v", errUsage, err))
	}
	if f.flags.NArg() != 2 {
		return layerFail(stderr, "apply", fmt.Errorf("%w: want LAYER.tar and DIR, got %d arguments", errUsage, f.flags.NArg()))
	}
	if *flatten && (f.flags.Changed("whiteout") || *f.userXattr) {
		return layerFail(stderr, "apply", fmt.Errorf("%w: --flatten writes no markers: --whiteout and --userxattr do not go with it", errUsage))
	}
	format, auto, err := whiteout.ParseFormat(*f.whiteout)
	if err != nil || auto {
		return layerFail(stderr, "apply", fmt.Errorf("%w: --whiteout=%q: want chardev, xattr or aufs", errUsage, *f.whiteout))
	}
	tarPath, dir := f.flags.Arg(0), f.flags.Arg(1)
	file, err := os.Open(tarPath)
	if err != nil {
		return layerFail(stderr, "apply", fmt.Errorf("%w: %v", errUsage, err))
	}
	defer file.Close()
	root, err := layerDir(dir)
	if err != nil {
		return layerFail(stderr, "apply", err)
	}
	unix.Close(root)
	st, err := tarlayer.Apply(file, dir, tarlayer.Options{Format: format, Markers: f.markers(), Flatten: *flatten})
	if err != nil {
		return layerFail(stderr, "apply", err)
	}
	if *flatten {
		fmt.Fprintf(stdout, "%s: applied %d entries to %s (%d whiteouts and %d opaque dirs deleted what they hide)\n",
			tarPath, st.Entries, dir, st.Whiteouts, st.Opaques)
		return 0
	}
	fmt.Fprintf(stdout, "%s: applied %d entries (%d whiteouts, %d opaque dirs, as %s) to %s\n",
		tarPath, st.Entries, st.Whiteouts, st.Opaques, format, dir)
	return 0
}

func layerFail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "unionmount %s: %v\n", cmd, err)
	if errors.Is(err, errUsage) || errors.Is(err, tarlayer.ErrUnsafe) {
		return 2
	}
	return 1
}
