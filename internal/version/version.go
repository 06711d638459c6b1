// Package version names the build a command runs from, for --version.
// It reads what the Go toolchain stamped into the binary (module version,
// VCS revision and time); it keeps no state.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// String is the one-line answer to `CMD --version`: the command, the
// module's version (a tag, or "devel"), the commit and its date (with
// "+dirty" for a build from a changed tree), and the Go toolchain.
func String(command string) string {
	v, rev, when, dirty := "devel", "", "", false
	if info, ok := debug.ReadBuildInfo(); ok {
		if info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if rev != "" && strings.Contains(v, rev[:min(12, len(rev))]) {
		v = "devel" // a pseudo-version only repeats the commit
	}
	out := fmt.Sprintf("%s %s", command, v)
	if rev != "" {
		out += " " + rev[:min(12, len(rev))]
		if dirty {
			out += "+dirty"
		}
		if when != "" {
			out += " " + when
		}
	}
	return out + " " + runtime.Version()
}
