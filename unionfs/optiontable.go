package unionfs

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/unionmount/unionmount/internal/fuseloop"
	"github.com/unionmount/unionmount/whiteout"
)

// optionSpec is one -o option: its names, the form of its value, one
// line of documentation, and how it sets the options. Parsing, --help
// and the option table of docs/unionmount.md all come from optionTable, so the three
// cannot drift apart.
type optionSpec struct {
	// names are the option's spellings; the first is the one shown.
	names []string
	// value is the value's form for people ("DIR[:DIR...]"), "" for an
	// option that takes none; valueOptional lets a switch stand alone.
	value         string
	valueOptional bool
	doc           string
	// ignored options are accepted for compatibility and do nothing
	// here; they are listed together at the end of the help.
	ignored bool
	set     func(p *optionParse, key, value string) error
}

// optionParse is the state of one ParseOptions call.
type optionParse struct {
	o          Options
	lowers     []string
	branches   string
	squashRoot bool
	// timeoutSet and udba decide a br= mount's cache timeout (see
	// ParseOptions).
	timeoutSet bool
	udba       string
}

// optionTable lists every option, in the order --help shows them.
var optionTable = []optionSpec{
	{names: []string{"lowerdir", "lower"}, value: "DIR[:DIR...]", doc: `lower layers, topmost first; "\:" escapes a colon, "\," a comma`,
		set: func(p *optionParse, key, v string) error {
			if v == "" {
				return badOption("%s needs a value", key)
			}
			p.lowers = append(p.lowers, splitEscaped(v, ':')...)
			return nil
		}},
	{names: []string{"upperdir", "upper"}, value: "DIR", doc: "the writable layer; without one the union is read-only",
		set: func(p *optionParse, _, v string) error { p.o.Upper = unescape(v); return nil }},
	{names: []string{"workdir", "work"}, value: "DIR", doc: "scratch dir on the upper's filesystem (default: a hidden sibling of the upper; for br= mounts .wh..wh.unionmount inside the writable branch, never shown, as aufs keeps its housekeeping)",
		set: func(p *optionParse, _, v string) error { p.o.Work = unescape(v); return nil }},
	{names: []string{"br", "dirs"}, value: "DIR=rw:DIR=ro...", doc: "aufs branches (also br:DIR=rw:..., Docker's form), leftmost on top, each rw, ro or rr (+wh, +nolwh), writable ones anywhere (a single one on top is an upper dir); aufs whiteouts unless whiteout= says otherwise",
		set: func(p *optionParse, key, v string) error {
			if v == "" {
				return badOption("%s needs a value: DIR[=rw|ro][:DIR[=ro]...]", key)
			}
			p.branches = v
			return nil
		}},
	{names: []string{"create"}, value: "tdp|rr|mfs", doc: "aufs: which writable branch a new name goes on: tdp (default) the topmost holding the parent dir, rr round robin, mfs the most free space",
		set: func(p *optionParse, _, v string) error {
			c, err := ParseCreatePolicy(v)
			p.o.Create = c
			return err
		}},
	{names: []string{"udba"}, value: "reval|none|notify", doc: "aufs: reval (default for br=) sees changes made in the branches underneath: names and attributes are cached for 0 s unless timeout= says otherwise; none caches as lowerdir= mounts do; notify is taken as reval",
		set: func(p *optionParse, key, v string) error {
			switch v {
			case "reval", "none", "notify":
				p.udba = v
				return nil
			}
			return badOption("%s=%q: want reval, none or notify", key, v)
		}},
	{names: []string{"dio", "dirperm1", "noplink", "plink", "nodirperm1", "nodio", "shwh", "noshwh", "sum", "nosum", "warn_perm", "nowarn_perm", "verbose", "noverbose", "trunc_xino", "notrunc_xino", "noxino", "acl", "noatime_branch"},
		ignored: true, doc: "aufs switches Docker and aufs tools pass, with no effect here: dio (O_DIRECT is passed on as it is), dirperm1 (permissions are checked on the topmost copy, as dirperm1 asks), plink/noplink (hard links of a branch are real links, nothing to keep)"},
	{names: []string{"xino", "trunc_xino_path", "wbr_copyup", "cpup", "wbr_create", "rdblk", "rdhash", "dirwh", "plink_maint"}, value: "...", ignored: true,
		doc: "aufs settings with a value, no effect here: xino= (inode numbers are kept without a file), cpup= (copy-up goes to the topmost writable branch above)"},
	{names: []string{"redirect_dir"}, value: "on|follow|off|nofollow", doc: "on (default): renaming a lower directory works (a redirect xattr, as kernel overlay); otherwise EXDEV, and nofollow ignores existing redirects",
		set: func(p *optionParse, _, v string) error {
			switch v {
			case "on":
				p.o.Redirect = RedirectOn
			case "follow", "off":
				// Kernel overlay's "off" means "follow" under its
				// default redirect_always_follow=Y.
				p.o.Redirect = RedirectFollow
			case "nofollow":
				p.o.Redirect = RedirectNoFollow
			default:
				return badOption("redirect_dir=%q: want on, follow, off or nofollow", v)
			}
			return nil
		}},
	{names: []string{"userxattr"}, doc: "keep markers in user.overlay.* (chosen by itself where trusted.* cannot be written)",
		set: func(p *optionParse, _, _ string) error { p.o.UserXattr = true; return nil }},
	{names: []string{"whiteout"}, value: "auto|chardev|xattr|aufs", doc: "format of new whiteouts (auto: a 0/0 device, else the xattr format); all three are read",
		set: func(p *optionParse, _, v string) error {
			if _, _, err := whiteout.ParseFormat(v); err != nil {
				return badOption("%v", err)
			}
			p.o.Whiteout = v
			return nil
		}},
	{names: []string{"metacopy"}, value: "on|off", doc: "chmod, chown, utimes and xattrs copy up metadata only, in kernel overlay's format (default off)",
		set: switchOption(func(o *Options, on bool) { o.Metacopy = on })},
	{names: []string{"index"}, value: "on|off", doc: "keep a copied-up lower hard link one file through kernel overlay's inode index, index/ in the work dir (default off, as the kernel's)",
		set: switchOption(func(o *Options, on bool) { o.Index = on })},
	{names: []string{"ro"}, doc: "read-only",
		set: func(p *optionParse, _, _ string) error { p.o.ReadOnly = true; return nil }},
	{names: []string{"nonempty"}, doc: "allow a non-empty mount point",
		set: func(p *optionParse, _, _ string) error { p.o.NonEmpty = true; return nil }},
	{names: []string{"fsync"}, value: "on|off", doc: "fsync copied-up files before they show (default on)",
		set: switchOption(func(o *Options, on bool) { o.NoFsync = !on })},
	{names: []string{"volatile"}, doc: "the same as fsync=off (throw-away containers)",
		set: func(p *optionParse, _, _ string) error { p.o.NoFsync = true; return nil }},
	{names: []string{"passthrough"}, value: "on|upper|off", valueOptional: true, doc: "FUSE passthrough: on, of open upper files and read-only opens of lower files, so unions over one lower share its page cache (default); upper: of upper files only; root of the initial user namespace only",
		set: func(p *optionParse, key, v string) error {
			switch v {
			case "", "auto", "on", "1":
				p.o.Passthrough, p.o.LowerPassthrough = true, true
			case "upper":
				p.o.Passthrough, p.o.LowerPassthrough = true, false
			case "off", "0":
				p.o.Passthrough, p.o.LowerPassthrough = false, false
			default:
				return badOption("%s=%q: want on, upper or off", key, v)
			}
			return nil
		}},
	{names: []string{"writeback"}, value: "on|off", doc: "where passthrough is not used, the kernel caches writes (default on); off: every write is a request",
		set: switchOption(func(o *Options, on bool) { o.NoWriteback = !on })},
	{names: []string{"transport"}, value: "auto|io_uring|dev-fuse|go-fuse", doc: "how requests reach the daemon: io_uring (FUSE-over-io_uring, where the kernel enables it), dev-fuse (the union's own /dev/fuse loop), go-fuse (go-fuse's loop); auto (default, or $UNIONMOUNT_TRANSPORT) takes io_uring where it can run, dev-fuse otherwise",
		set: func(p *optionParse, key, v string) error {
			if err := fuseloop.CheckTransport(v); err != nil {
				return badOption("%s: %v", key, err)
			}
			p.o.Transport = v
			return nil
		}},
	{names: []string{"timeout"}, value: "SECONDS", doc: "how long the kernel may cache names and attributes (default 3600)",
		set: func(p *optionParse, _, v string) error {
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil || secs < 0 || secs > 1e6 {
				return badOption("timeout=%q: want seconds the kernel may cache names and attributes", v)
			}
			p.o.CacheTimeout = time.Duration(secs * float64(time.Second))
			p.timeoutSet = true
			return nil
		}},
	{names: []string{"uidmapping"}, value: "S:M:N[:S:M:N...]", doc: "ids S..S+N-1 in the layers show as M..M+N-1; ids no range covers show as 65534",
		set: func(p *optionParse, key, v string) error { return idMapOption(key, v, &p.o.UIDMap) }},
	{names: []string{"gidmapping"}, value: "S:M:N[:S:M:N...]", doc: "the same for group ids",
		set: func(p *optionParse, key, v string) error { return idMapOption(key, v, &p.o.GIDMap) }},
	{names: []string{"xattr_permissions"}, value: "0|1|2", doc: "keep owners and modes in an xattr (2: user.containers.override_stat, 1: security.fuseoverlayfs.override_stat)",
		set: func(p *optionParse, _, v string) error {
			switch v {
			case "0", "1", "2":
				p.o.XattrPermissions = int(v[0] - '0')
				return nil
			}
			return badOption("xattr_permissions=%q: want 0, 1 (security.* xattr) or 2 (user.* xattr)", v)
		}},
	{names: []string{"squash_to_root"}, doc: "show every object owned by root",
		set: func(p *optionParse, _, _ string) error { p.squashRoot = true; return nil }},
	{names: []string{"squash_to_uid"}, value: "ID", doc: "show every object owned by user ID (wins over squash_to_root)",
		set: func(p *optionParse, key, v string) error { return squashOption(key, v, &p.o.SquashUID) }},
	{names: []string{"squash_to_gid"}, value: "ID", doc: "show every object owned by group ID (wins over squash_to_root)",
		set: func(p *optionParse, key, v string) error { return squashOption(key, v, &p.o.SquashGID) }},
	{names: []string{"static_nlink"}, doc: "show directories with one link",
		set: func(p *optionParse, _, _ string) error { p.o.StaticNlink = true; return nil }},
	{names: []string{"noacl"}, doc: "refuse POSIX ACLs",
		set: func(p *optionParse, _, _ string) error { p.o.NoACL = true; return nil }},
	{names: []string{"allow_other"}, doc: "let other users use the mount (the default as root)",
		set: func(p *optionParse, _, _ string) error { p.o.AllowOther = true; return nil }},
	{names: []string{"fsname"}, value: "NAME", doc: "the source /proc/mounts shows",
		set: func(p *optionParse, _, v string) error { p.o.FsName = v; return nil }},
	{names: []string{"debug"}, doc: "trace every FUSE operation to the log",
		set: func(p *optionParse, _, _ string) error { p.o.Debug = true; return nil }},

	// Accepted so that option strings written for kernel overlay, for
	// mount(8) and fstab, or for other FUSE filesystems work unchanged.
	{names: []string{"nfs_export", "uuid", "verity", "subtype"}, value: "...", valueOptional: true, ignored: true,
		doc: "kernel overlay features this union does not implement: off is what they mean here"},
	{names: []string{"rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
		"relatime", "norelatime", "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime", "sync", "async",
		"dirsync", "auto", "noauto", "user", "nouser", "users", "owner", "nofail", "_netdev", "defaults",
		"silent", "loud", "mand", "nomand", "iversion", "noiversion", "default_permissions", "allow_root",
		"auto_unmount"}, ignored: true, doc: "generic mount options, left to the kernel and mount(8)"},
	{names: []string{"context", "fscontext", "defcontext", "rootcontext", "max_read", "blksize", "uid", "gid",
		"user_id", "group_id", "fd", "rootmode"}, value: "...", ignored: true, doc: "mount(8)'s and FUSE's own options with a value, left to them"},
}

// switchOption is the setter of an on/off option.
func switchOption(apply func(o *Options, on bool)) func(p *optionParse, key, value string) error {
	return func(p *optionParse, key, value string) error {
		on, err := onOff(key, value)
		if err != nil {
			return err
		}
		apply(&p.o, on)
		return nil
	}
}

func idMapOption(key, value string, into *IDMap) error {
	m, err := ParseIDMap(value)
	if err != nil {
		return badOption("%s=%v", key, err)
	}
	*into = m
	return nil
}

func squashOption(key, value string, into *int64) error {
	id, err := strconv.ParseUint(value, 10, 32)
	if err != nil {
		return badOption("%s=%q: want a numeric id", key, value)
	}
	*into = int64(id)
	return nil
}

// lookupOption finds the table entry for key.
func lookupOption(key string) (*optionSpec, bool) {
	for i := range optionTable {
		for _, n := range optionTable[i].names {
			if n == key {
				return &optionTable[i], true
			}
		}
	}
	return nil, false
}

// OptionsHelp is the -o part of unionmount --help, from the table.
func OptionsHelp() string {
	var b strings.Builder
	var ignored []string
	for _, s := range optionTable {
		if s.ignored {
			ignored = append(ignored, fmt.Sprintf("  %s\n      %s\n", wrapNames(s.names, 76, "      "), s.doc))
			continue
		}
		fmt.Fprintf(&b, "  %s\n      %s\n", optionForm(s), s.doc)
	}
	b.WriteString("Accepted, with no effect here:\n")
	b.WriteString(strings.Join(ignored, ""))
	return b.String()
}

// OptionsMarkdown is docs/unionmount.md's option table, from the table.
func OptionsMarkdown() string {
	var b strings.Builder
	b.WriteString("| option | meaning |\n| --- | --- |\n")
	for _, s := range optionTable {
		names := make([]string, len(s.names))
		for i, n := range s.names {
			names[i] = "`" + n + "`"
		}
		form := strings.Join(names, ", ")
		if !s.ignored {
			form = "`" + optionForm(s) + "`"
		}
		pipe := strings.NewReplacer("|", `\|`) // a bare | would end the cell
		fmt.Fprintf(&b, "| %s | %s |\n", pipe.Replace(form), pipe.Replace(s.doc))
	}
	return b.String()
}

// optionForm is how an option is written: "lowerdir=DIR[:DIR...]
// (also lower=)".
func optionForm(s optionSpec) string {
	form := s.names[0]
	if s.value != "" {
		if s.valueOptional {
			form += "[=" + s.value + "]"
		} else {
			form += "=" + s.value
		}
	}
	if len(s.names) > 1 {
		form += " (also " + strings.Join(s.names[1:], "=, ") + ")"
		if s.value != "" {
			form = strings.TrimSuffix(form, ")") + "=)"
		}
	}
	return form
}

// wrapNames lists names comma-separated in lines of at most width.
func wrapNames(names []string, width int, indent string) string {
	var b strings.Builder
	line := 0
	for i, n := range names {
		piece := n
		if i < len(names)-1 {
			piece += ","
		}
		if line > 0 && line+1+len(piece) > width {
			b.WriteString("\n" + indent)
			line = len(indent) - 2
		} else if line > 0 {
			b.WriteString(" ")
			line++
		}
		b.WriteString(piece)
		line += len(piece)
	}
	return b.String()
}
