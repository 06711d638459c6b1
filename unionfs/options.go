package unionfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fuseloop"
)

// RedirectMode is kernel overlayfs's redirect_dir setting: whether a
// renamed lower directory is recorded with a redirect xattr, and whether
// existing redirects are followed.
type RedirectMode int

const (
	// RedirectOn creates and follows redirects: directory renames work.
	RedirectOn RedirectMode = iota
	// RedirectFollow follows existing redirects but creates none, so a
	// rename of a lower directory fails with EXDEV.
	RedirectFollow
	// RedirectNoFollow neither creates nor follows redirects.
	RedirectNoFollow
)

// Options configures one union mount.
type Options struct {
	// Lowers are the read-only layers, topmost first.
	Lowers []string
	// Upper is the writable layer; empty means a read-only union.
	Upper string
	// Work is the scratch directory for atomic copy-up, on the same
	// filesystem as Upper. Empty means a hidden sibling of Upper.
	Work string

	Redirect RedirectMode
	// UserXattr keeps overlay markers in user.overlay.* rather than
	// trusted.overlay.*.
	UserXattr bool
	// ReadOnly refuses every change even when an upper is given.
	ReadOnly bool
	// NonEmpty allows mounting over a non-empty directory.
	NonEmpty bool
	// NoFsync skips the fsync of copied-up files (fsync=0, volatile).
	NoFsync bool
	// Passthrough asks for FUSE passthrough of open files where the
	// kernel and privileges allow it.
	Passthrough bool
	// LowerPassthrough extends Passthrough to read-only opens of files
	// whose data is in a lower layer, so that unions over one lower
	// share its page cache (see passthrough.go).
	LowerPassthrough bool
	// AllowOther lets users other than the mounter use the mount.
	AllowOther bool
	// Transport is how requests reach the daemon (transport=): auto,
	// io_uring, dev-fuse or go-fuse (see internal/fuseloop). Empty means
	// the default, DefaultTransport.
	Transport string
	// Debug traces every FUSE operation to the log.
	Debug bool
	// FsName is the source shown in /proc/mounts.
	FsName string
	// SquashUID and SquashGID, when not negative, are the owner every
	// object shows (squash_to_root, squash_to_uid=, squash_to_gid=).
	SquashUID, SquashGID int64
	// StaticNlink shows every directory with one link (static_nlink).
	StaticNlink bool
	// NoACL refuses POSIX ACLs (noacl).
	NoACL bool
	// UIDMap and GIDMap shift the ids the layers keep to the ids the
	// mount shows (uidmapping=, gidmapping=).
	UIDMap, GIDMap IDMap
	// XattrPermissions, 1 or 2, keeps owners and modes that cannot be
	// set for real in an override xattr and shows those (0: off).
	XattrPermissions int
	// Whiteout is the format new whiteouts are written in: auto (a
	// character device, falling back to xattr where device nodes cannot
	// be made), chardev, xattr or aufs. All three are read regardless.
	Whiteout string
	// NoWriteback keeps the kernel's writeback cache off where it would
	// be used: mounts without passthrough (writeback=0).
	NoWriteback bool
	// Metacopy makes changes of metadata alone (chmod, chown, utimes,
	// xattrs) copy up a file's metadata only, in kernel overlay's
	// metacopy format: its data stays in the lower layer until the first
	// write (metacopy=on).
	Metacopy bool
	// Index keeps the names of a copied-up lower hard link one file, in
	// kernel overlay's inode index format (index=on, see index.go).
	Index bool
	// CacheTimeout is how long the kernel may cache names and
	// attributes (timeout=SECONDS).
	CacheTimeout time.Duration
	// WorkInUpper puts the default work dir inside the upper, under a
	// .wh. name the union never shows, as aufs keeps its housekeeping
	// (br= mounts without workdir=; see branches.go).
	WorkInUpper bool
	// Branches, set only for an aufs br= mount that does not fit the
	// upper-over-lowers shape (a writable branch below a read-only one,
	// or several writable ones), is the whole stack, leftmost on top;
	// Lowers then names the same directories (see branches.go).
	Branches []Branch
	// Create is the aufs create policy of such a mount (create=).
	Create CreatePolicy
	// Crash is the fault-injection seam of crash tests: called with the
	// name of each crash point (CrashPoints) a copy-up passes; nil
	// otherwise.
	Crash func(point string)
}

// DefaultCacheTimeout is how long the kernel caches names and attributes
// unless timeout= says otherwise.
const DefaultCacheTimeout = time.Hour

// TransportEnv names the environment variable that overrides the default
// transport (auto), so a whole test suite can run over one transport.
const TransportEnv = "UNIONMOUNT_TRANSPORT"

// DefaultTransport is the transport of a mount without transport=: auto,
// or what TransportEnv says.
func DefaultTransport() (string, error) {
	t := os.Getenv(TransportEnv)
	if t == "" {
		return fuseloop.TransportAuto, nil
	}
	if err := fuseloop.CheckTransport(t); err != nil {
		return "", badOption("%s: %v", TransportEnv, err)
	}
	return t, nil
}

// ErrBadOption marks errors in the user's options, as opposed to
// failures of the system.
var ErrBadOption = errors.New("bad option")

func badOption(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadOption, fmt.Sprintf(format, args...))
}

// ParseOptions parses comma-separated option strings, as given to -o,
// into Options (optionTable says what each option does). Commas and
// colons inside values can be escaped with a backslash.
func ParseOptions(optionLists []string) (Options, error) {
	transport, err := DefaultTransport()
	if err != nil {
		return Options{}, err
	}
	p := optionParse{o: Options{Transport: transport, Passthrough: true, LowerPassthrough: true, AllowOther: os.Geteuid() == 0, SquashUID: -1, SquashGID: -1, CacheTimeout: DefaultCacheTimeout}}
	for _, list := range optionLists {
		for _, opt := range splitEscaped(list, ',') {
			if opt == "" {
				continue
			}
			if strings.HasPrefix(opt, "br:") {
				opt = "br=" + opt[len("br:"):] // Docker's aufs driver writes br:DIR=rw:...
			}
			key, value, hasValue := strings.Cut(opt, "=")
			spec, ok := lookupOption(key)
			switch {
			case !ok:
				return p.o, badOption("unknown option %q", opt)
			case spec.value == "" && hasValue:
				return p.o, badOption("option %s takes no value (got %q)", key, opt)
			case spec.value != "" && !hasValue && !spec.valueOptional:
				return p.o, badOption("option %s needs a value: %s=%s", key, key, spec.value)
			case spec.ignored:
				continue
			}
			if err := spec.set(&p, key, value); err != nil {
				return p.o, err
			}
		}
	}
	o := p.o
	lowers := p.lowers
	if p.branches != "" {
		if len(lowers) > 0 || o.Upper != "" {
			return o, badOption("br= names every branch: it cannot be mixed with lowerdir= or upperdir=")
		}
		branches, err := parseBranches(p.branches)
		if err != nil {
			return o, err
		}
		o.Upper, lowers, o.Branches = branchLayers(branches)
		if o.Whiteout == "" {
			o.Whiteout = "aufs" // what aufs tools expect to find in the branches
		}
		o.WorkInUpper = o.Upper != "" && o.Work == ""
		if p.udba != "none" && !p.timeoutSet {
			o.CacheTimeout = 0 // udba=reval: see changes made underneath
		}
	}
	// squash_to_uid and squash_to_gid take precedence over squash_to_root.
	if p.squashRoot {
		if o.SquashUID < 0 {
			o.SquashUID = 0
		}
		if o.SquashGID < 0 {
			o.SquashGID = 0
		}
	}
	o.Lowers = lowers
	return o, nil
}

// splitEscaped splits s at sep, honouring backslash escapes of sep and
// of backslash itself; the escapes are kept for unescape to remove.
func splitEscaped(s string, sep byte) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			if s[i+1] == sep && sep != ',' {
				cur.WriteByte(s[i+1])
				i++
				continue
			}
			cur.WriteByte(c)
			cur.WriteByte(s[i+1])
			i++
			continue
		}
		if c == sep {
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	parts = append(parts, cur.String())
	if sep != ',' {
		for i := range parts {
			parts[i] = unescape(parts[i])
		}
	}
	return parts
}

// unescape removes backslash escapes.
func unescape(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Validate checks the layers and the mount point, and fills in defaults
// (absolute paths, the work directory). It writes nothing.
func (o *Options) Validate(mountpoint string) error {
	if len(o.Lowers) == 0 {
		return badOption("no lower layer given (lower=DIR[:DIR...] or lowerdir=)")
	}
	if o.Upper == "" && o.Work != "" {
		return badOption("work dir given without an upper dir")
	}
	if o.Index && (o.Upper == "" || o.ReadOnly) {
		return badOption("index=on needs an upper dir to keep the index in (as kernel overlay)")
	}
	if o.Index && o.UserXattr {
		return badOption("index=on cannot be used with userxattr (kernel overlay refuses it too)")
	}
	var err error
	for i, l := range o.Lowers {
		if o.Lowers[i], err = checkDir("lower", l); err != nil {
			return err
		}
	}
	for i := range o.Branches {
		o.Branches[i].Path = o.Lowers[i]
	}
	if o.Upper != "" {
		if o.Upper, err = checkDir("upper", o.Upper); err != nil {
			return err
		}
		if o.Work == "" && o.WorkInUpper {
			o.Work = filepath.Join(o.Upper, workDirName)
		} else if o.Work == "" {
			o.Work = filepath.Join(filepath.Dir(o.Upper), "."+filepath.Base(o.Upper)+".unionmount-work")
			if _, err := os.Lstat(o.Work); err == nil {
				if o.Work, err = checkDir("work", o.Work); err != nil {
					return err
				}
			} else if !os.IsNotExist(err) {
				return fmt.Errorf("work dir %s: %w", o.Work, err)
			}
		} else if o.Work, err = checkDir("work", o.Work); err != nil {
			return err
		}
	}
	for _, l := range o.Lowers {
		for _, pair := range [][2]string{{"upper", o.Upper}, {"work", o.Work}} {
			if pair[1] == "" {
				continue
			}
			if overlaps(l, pair[1]) {
				return badOption("%s dir %s and lower dir %s overlap: one is inside the other", pair[0], pair[1], l)
			}
		}
	}
	if o.Upper != "" {
		if overlaps(o.Upper, o.Work) && !o.WorkInUpper {
			return badOption("upper dir %s and work dir %s overlap: one is inside the other", o.Upper, o.Work)
		}
		if err := sameFilesystem(o.Upper, o.Work); err != nil {
			return err
		}
	}
	if mountpoint != "" {
		return o.checkMountpoint(mountpoint)
	}
	return nil
}

func (o *Options) checkMountpoint(mountpoint string) error {
	abs, err := unclean(mountpoint)
	if err != nil {
		return err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return badOption("mount point %s: %v", mountpoint, errors.Unwrap(err))
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return badOption("mount point %s: %v", mountpoint, err)
	}
	if !st.IsDir() {
		return badOption("mount point %s is not a directory", mountpoint)
	}
	if !o.NonEmpty {
		f, err := os.Open(abs)
		if err != nil {
			return badOption("mount point %s: %v", mountpoint, err)
		}
		names, _ := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			return badOption("mount point %s is not empty (use -o nonempty to mount over it)", mountpoint)
		}
	}
	for _, dir := range append(append([]string{}, o.Lowers...), o.Upper, o.Work) {
		if dir != "" && isWithin(dir, abs) {
			return badOption("layer %s is inside the mount point %s", dir, abs)
		}
	}
	return nil
}

// checkDir resolves p to an absolute, symlink-free path and checks it is
// a directory. The path is resolved as the kernel resolves it: each
// symlink before the ".." that follows it, so "l/LINK/../diff1" with LINK
// pointing at "../ID/diff" is "ID/diff1" (containers/storage writes such
// lowerdirs for id-mapped layers). Cleaning the text first, as
// filepath.Abs does, would make it "l/diff1".
func checkDir(role, p string) (string, error) {
	if p == "" {
		return "", badOption("%s dir is empty", role)
	}
	abs, err := unclean(p)
	if err != nil {
		return "", badOption("%s dir %s: %v", role, p, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if os.IsNotExist(err) {
			return "", badOption("%s dir %s does not exist", role, p)
		}
		return "", badOption("%s dir %s: %v", role, p, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", badOption("%s dir %s: %v", role, p, err)
	}
	if !st.IsDir() {
		return "", badOption("%s dir %s is not a directory", role, p)
	}
	return real, nil
}

// unclean makes p absolute without cleaning it: a ".." after a symlink
// must stay for filepath.EvalSymlinks to apply after following the link.
func unclean(p string) (string, error) {
	if filepath.IsAbs(p) {
		return p, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return wd + string(filepath.Separator) + p, nil // not Join: it cleans
}

// isWithin reports whether p is inside dir (or is dir).
func isWithin(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func overlaps(a, b string) bool {
	return isWithin(a, b) || isWithin(b, a)
}

// sameFilesystem checks that work is on upper's filesystem, or, when it
// does not exist yet, that its parent is.
func sameFilesystem(upper, work string) error {
	var su, sw unix.Stat_t
	if err := unix.Stat(upper, &su); err != nil {
		return fmt.Errorf("upper dir %s: %w", upper, err)
	}
	target := work
	if _, err := os.Stat(work); os.IsNotExist(err) {
		target = filepath.Dir(work)
	}
	if err := unix.Stat(target, &sw); err != nil {
		return fmt.Errorf("work dir %s: %w", work, err)
	}
	if su.Dev != sw.Dev {
		return badOption("work dir %s is on another filesystem than upper dir %s", work, upper)
	}
	return nil
}

// onOff parses the value of a switch option: on or 1, off or 0.
func onOff(key, value string) (bool, error) {
	switch value {
	case "on", "1":
		return true, nil
	case "off", "0":
		return false, nil
	}
	return false, badOption("%s=%q: want on or off (1 or 0)", key, value)
}
