package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/syslog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/unionmount/unionmount/internal/mountstate"
	"github.com/unionmount/unionmount/internal/version"
	"github.com/unionmount/unionmount/unionfs"
)

// fsType is the mount table's name for a union.
const fsType = "fuse.unionmount"

const statusUsage = `usage: unionmount status [--json]

Lists the unions mounted in this mount namespace: mount point, daemon pid,
layers, options, and how the daemon serves them (passthrough, writeback
cache, whiteout format). Unions of other users, or whose daemon ended
without cleaning up, are listed without those details.

Flags:
`

// runStatus prints the mounted unions, for people or (--json) machines.
func runStatus(args []string, stdout, stderr io.Writer) int {
	flags := pflag.NewFlagSet("unionmount status", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	asJSON := flags.Bool("json", false, "print JSON")
	help := flags.BoolP("help", "h", false, "show this help")
	flags.Usage = func() {
		fmt.Fprint(stderr, statusUsage)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		fmt.Fprintf(stderr, "unionmount status: %v\n", err)
		return 2
	}
	if *help {
		flags.Usage()
		return 0
	}
	if flags.NArg() != 0 {
		fmt.Fprintf(stderr, "unionmount status: takes no arguments (see --help)\n")
		return 2
	}
	mounts, err := mountstate.List(mountstate.Dir(), fsType)
	if err != nil {
		fmt.Fprintf(stderr, "unionmount status: %v\n", err)
		return 1
	}
	if *asJSON {
		if mounts == nil {
			mounts = []mountstate.Mount{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(mounts)
		return 0
	}
	if len(mounts) == 0 {
		fmt.Fprintln(stdout, "no unions mounted")
		return 0
	}
	for i, m := range mounts {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "%s\n", m.Mountpoint)
		r := m.Record
		if r == nil {
			fmt.Fprintf(w, "  device\t%s\n  source\t%s\n  note\t%s\n", m.Device, m.Source, m.Note)
			w.Flush()
			continue
		}
		fmt.Fprintf(w, "  pid\t%d\n", r.PID)
		fmt.Fprintf(w, "  lower\t%s\n", strings.Join(r.Lowers, ":"))
		if r.Upper != "" {
			fmt.Fprintf(w, "  upper\t%s\n  work\t%s\n", r.Upper, r.Work)
		}
		fmt.Fprintf(w, "  options\t%s\n", strings.Join(r.Options, ","))
		if mode, err := json.Marshal(r.Mode); err == nil {
			var md unionfs.Mode
			if json.Unmarshal(mode, &md) == nil {
				fmt.Fprintf(w, "  mode\t%s\n", describeMode(md))
			}
		}
		fmt.Fprintf(w, "  since\t%s\n", r.Started.Format(time.RFC3339))
		if r.Log != "" {
			fmt.Fprintf(w, "  log\t%s\n", r.Log)
		}
		fmt.Fprintf(w, "  version\t%s\n", r.Version)
		w.Flush()
	}
	return 0
}

func describeMode(m unionfs.Mode) string {
	parts := []string{m.Transport}
	if m.WhyNotIOURing != "" {
		parts[0] += " (no io_uring: " + m.WhyNotIOURing + ")"
	}
	if m.ReadOnly {
		parts = append(parts, "read-only")
	}
	if m.LowerPassthrough {
		parts = append(parts, "passthrough (upper and lower files)")
	} else if m.Passthrough {
		parts = append(parts, "passthrough (upper files)")
	}
	if m.Writeback {
		parts = append(parts, "writeback cache")
	}
	parts = append(parts, "whiteout="+m.Whiteout)
	if m.Metacopy {
		parts = append(parts, "metacopy")
	}
	return strings.Join(parts, ", ")
}

// writeRecord leaves the record status reads, once the mount is ready.
func writeRecord(mountpoint, dev string, given []string, opts unionfs.Options, ufs *unionfs.FS, logPath, control string) (func(), error) {
	var lowers []string
	for _, b := range ufs.Branches() {
		if b.Path != opts.Upper {
			lowers = append(lowers, b.Path)
		}
	}
	return mountstate.Write(mountstate.Dir(), mountstate.Record{
		Mountpoint: mountpoint,
		PID:        os.Getpid(),
		Control:    control,
		Lowers:     lowers,
		Upper:      opts.Upper,
		Work:       opts.Work,
		Options:    given,
		Mode:       ufs.Mode(),
		Log:        logPath,
		Started:    time.Now().UTC().Truncate(time.Second),
		Version:    version.String("unionmount"),
		Device:     dev,
	})
}

// backgroundLogger is the log of a daemon that has left its terminal: a
// file in the status directory, which `unionmount status` names, and
// syslog where the machine has one. Each line names the mount point.
func backgroundLogger(mountpoint string) (logger *log.Logger, path string, closeLog func()) {
	var out []io.Writer
	closeLog = func() {}
	dir := mountstate.Dir()
	if err := os.MkdirAll(dir, 0o700); err == nil {
		path = filepath.Join(dir, "unionmount.log")
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err == nil {
			out = append(out, f)
			closeLog = func() { f.Close() }
		} else {
			path = ""
		}
	}
	if sl, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_WARNING, "unionmount"); err == nil {
		out = append(out, sl)
	}
	prefix := fmt.Sprintf("unionmount[%d] %s: ", os.Getpid(), mountpoint)
	return log.New(io.MultiWriter(out...), prefix, log.LstdFlags), path, closeLog
}
