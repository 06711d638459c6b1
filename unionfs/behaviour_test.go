package unionfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// A behaviour check runs against a merged view whose lower layer held
// lower when it was mounted. The same table runs on a plain directory
// (where the check applies), on kernel overlay and on unionmount: the
// first two prove the check itself right.
type behaviour struct {
	name  string
	lower fstest.Spec
	// unionOnly checks need layers (a plain directory has no whiteouts
	// or copy-up to observe).
	unionOnly bool
	// kernelInNamespace, when set, says why kernel overlay inside a user
	// namespace cannot pass the check.
	kernelInNamespace string
	// index says which of kernel overlay's index settings the check
	// holds under: a copy-up breaks a lower hard link apart with the
	// index off and keeps it one file with it on.
	index indexNeed
	// readsLowerWhileWritten is set on checks that keep a lower file
	// open for reading while another descriptor writes it: with lower
	// files through passthrough (unionmount's default as root) that
	// write is ETXTBSY, a documented difference (passthrough.go), so
	// such checks run on unionmount with passthrough=upper instead.
	readsLowerWhileWritten bool
	run                    func(t *testing.T, m string)
}

type indexNeed int

const (
	indexAny indexNeed = iota
	indexOff
	indexOn
)

// kernelOverlayOptions make kernel overlay behave like unionmount's
// defaults: directory renames by redirect, no metadata-only copy-up. In
// a user namespace the kernel keeps its markers in user.* xattrs and
// then refuses redirects (userxattr implies redirect_dir=nofollow).
func kernelOverlayOptions() []string {
	if fstest.InUserNamespace() {
		return []string{"metacopy=off", "index=off"}
	}
	return []string{"redirect_dir=on", "metacopy=off", "index=off"}
}

// noRedirectInNamespace is why kernel overlay fails checks that rename
// lower directories inside a user namespace.
const noRedirectInNamespace = "kernel overlay cannot rename lower directories in a user namespace (userxattr implies redirect_dir=nofollow)"

type target struct {
	name  string
	union bool
	// index is set on the targets mounted with index=on.
	index bool
	mount func(t *testing.T, lower fstest.Spec) string
}

var targets = []target{
	{"plain dir", false, false, func(t *testing.T, lower fstest.Spec) string {
		dir := t.TempDir()
		// Other users reach in as they do in fstest.NewLayers.
		os.Chmod(dir, 0o755)
		os.Chmod(filepath.Dir(dir), 0o755)
		fstest.WriteTree(t, dir, lower)
		return dir
	}},
	{"kernel overlay", true, false, func(t *testing.T, lower fstest.Spec) string {
		fstest.RequireKernelOverlay(t)
		l := fstest.NewLayers(t, 1)
		fstest.WriteTree(t, l.Lowers[0], lower)
		fstest.MountKernelOverlay(t, l, kernelOverlayOptions()...)
		return l.Mount
	}},
	{"unionmount", true, false, mountUnionWith()},
	{"unionmount whiteout=xattr", true, false, mountUnionWith("whiteout=xattr")},
	{"unionmount whiteout=aufs", true, false, mountUnionWith("whiteout=aufs")},
	// Without passthrough the daemon serves every read and write, and
	// the kernel keeps a writeback cache of the files: the mode of every
	// mount without root.
	{"unionmount passthrough=off", true, false, mountUnionWith("passthrough=off")},
	{"unionmount passthrough=off writeback=0", true, false, mountUnionWith("passthrough=off", "writeback=0")},
}

// indexTargets run the lower hard link checks (linkBehaviours) with
// kernel overlay's index on: the kernel proves the checks, unionmount
// must pass them.
var indexTargets = []target{
	{"kernel overlay index=on", true, true, func(t *testing.T, lower fstest.Spec) string {
		fstest.RequireKernelOverlay(t)
		l := fstest.NewLayers(t, 1)
		fstest.WriteTree(t, l.Lowers[0], lower)
		fstest.MountKernelOverlay(t, l, "redirect_dir=on", "metacopy=off", "index=on")
		return l.Mount
	}},
	{"unionmount index=on", true, true, mountUnionWith("index=on")},
}

func mountUnionWith(opts ...string) func(t *testing.T, lower fstest.Spec) string {
	return func(t *testing.T, lower fstest.Spec) string {
		l := fstest.NewLayers(t, 1)
		fstest.WriteTree(t, l.Lowers[0], lower)
		uniontest.Mount(t, l, opts...)
		return l.Mount
	}
}

func TestBehaviourTable(t *testing.T) {
	var behaviours []behaviour
	behaviours = append(behaviours, fileBehaviours...)
	behaviours = append(behaviours, nameBehaviours...)
	behaviours = append(behaviours, listingBehaviours...)
	behaviours = append(behaviours, execBehaviours...)
	behaviours = append(behaviours, linkBehaviours...)
	links := map[string]bool{}
	for _, b := range linkBehaviours {
		links[b.name] = true
	}
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) {
			all := targets
			// The index needs trusted xattrs, which a user namespace
			// lacks: neither kernel overlay nor unionmount offers it there.
			if links[b.name] && !fstest.InUserNamespace() {
				all = append(slices.Clip(targets), indexTargets...)
			}
			if b.readsLowerWhileWritten {
				all = append(slices.Clip(all), target{"unionmount passthrough=upper", true, false, mountUnionWith("passthrough=upper")})
				if links[b.name] && !fstest.InUserNamespace() {
					all = append(all, target{"unionmount index=on passthrough=upper", true, true, mountUnionWith("index=on", "passthrough=upper")})
				}
			}
			for _, tg := range all {
				if b.readsLowerWhileWritten && strings.HasPrefix(tg.name, "unionmount") && !strings.Contains(tg.name, "passthrough=") {
					continue // see readsLowerWhileWritten
				}
				if b.unionOnly && !tg.union || b.index == indexOff && tg.index || b.index == indexOn && !tg.index {
					continue
				}
				t.Run(tg.name, func(t *testing.T) {
					if b.kernelInNamespace != "" && tg.name == "kernel overlay" && fstest.InUserNamespace() {
						t.Skip(b.kernelInNamespace)
					}
					b.run(t, tg.mount(t, b.lower))
				})
			}
		})
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(data)
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(p, &st), "lstat %s", p)
	return &st
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}
