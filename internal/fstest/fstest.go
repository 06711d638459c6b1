// Package fstest holds the helpers the filesystem tests share: skipping
// with a reason where root, FUSE or kernel overlay is missing, building
// layer trees in t.TempDir(), mounting kernel overlay and unionmount
// there with unmounts checked at cleanup, and snapshotting trees so two
// mounts (or two upper dirs) can be compared.
package fstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mounts, ownership changes, trusted xattrs)")
	}
}

// RequireFUSE skips the test unless this process can mount FUSE.
func RequireFUSE(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	}
	f.Close()
}

// RequireKernelOverlay skips the test unless kernel overlayfs can be
// mounted here.
func RequireKernelOverlay(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	data, _ := os.ReadFile("/proc/filesystems")
	if !strings.Contains(string(data), "\toverlay\n") {
		if exec.Command("modprobe", "overlay").Run() != nil {
			t.Skip("kernel has no overlay filesystem")
		}
	}
}

// Layers is a set of layer directories for one union, under t.TempDir().
type Layers struct {
	Lowers []string // topmost first
	Upper  string
	Work   string
	Mount  string
}

// NewLayers makes nLowers empty lower dirs, an upper, a work dir and a
// mount point in a fresh temporary directory.
func NewLayers(t testing.TB, nLowers int) *Layers {
	t.Helper()
	root := t.TempDir()
	// The suite's impermissible checks and other users need to reach in.
	os.Chmod(root, 0o755)
	os.Chmod(filepath.Dir(root), 0o755)
	l := &Layers{Upper: filepath.Join(root, "upper"), Work: filepath.Join(root, "work"), Mount: filepath.Join(root, "merged")}
	for i := 0; i < nLowers; i++ {
		l.Lowers = append(l.Lowers, filepath.Join(root, "lower"+string(rune('0'+i))))
	}
	for _, d := range append(append([]string{}, l.Lowers...), l.Upper, l.Work, l.Mount) {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// OverlayOptions returns the lowerdir=,upperdir=,workdir= option string.
func (l *Layers) OverlayOptions() string {
	return "lowerdir=" + strings.Join(l.Lowers, ":") + ",upperdir=" + l.Upper + ",workdir=" + l.Work
}

// EscapedOptions is OverlayOptions with commas and colons inside paths
// escaped, as unionmount reads them (kernel overlay cannot).
func (l *Layers) EscapedOptions() string {
	esc := strings.NewReplacer(`\`, `\\`, ",", `\,`, ":", `\:`)
	lowers := make([]string, len(l.Lowers))
	for i, p := range l.Lowers {
		lowers[i] = esc.Replace(p)
	}
	return "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + esc.Replace(l.Upper) + ",workdir=" + esc.Replace(l.Work)
}

// MountKernelOverlay mounts kernel overlayfs over l with the given extra
// options and unmounts it at cleanup.
func MountKernelOverlay(t testing.TB, l *Layers, extra ...string) {
	t.Helper()
	RequireKernelOverlay(t)
	unmount, err := StartKernelOverlay(l, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
}

// Spec describes a tree: a path ending in "/" is a directory, "->TARGET"
// makes a symlink, Executable(content) an executable file, HardLink(path)
// another name of the file at path, anything else is a file's content.
type Spec map[string]string

// executableMark starts a Spec value that makes an executable file; no
// text file a test writes starts with a NUL.
const executableMark = "\x00exec\x00"

// Executable is a Spec value for a file of mode 0755 holding content.
func Executable(content string) string { return executableMark + content }

// hardLinkMark starts a Spec value that makes a hard link.
const hardLinkMark = "\x00link\x00"

// HardLink is a Spec value for another name of the file the Spec makes at
// path (relative to the tree's root).
func HardLink(path string) string { return hardLinkMark + path }

// WriteTree creates spec under dir: hard links last, once the files they
// name exist.
func WriteTree(t testing.TB, dir string, spec Spec) {
	t.Helper()
	for p, v := range spec {
		if strings.HasPrefix(v, hardLinkMark) {
			continue
		}
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(p, "/"):
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(v, "->"):
			if err := os.Symlink(strings.TrimPrefix(v, "->"), full); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(v, executableMark):
			if err := os.WriteFile(full, []byte(strings.TrimPrefix(v, executableMark)), 0o755); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(full, []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for p, v := range spec {
		if target, ok := strings.CutPrefix(v, hardLinkMark); ok {
			full := filepath.Join(dir, p)
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(filepath.Join(dir, target), full); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// CopyTree copies the tree at src into dst (which must exist) with
// modes, owners, times, symlinks, device nodes and xattrs kept.
func CopyTree(t testing.TB, src, dst string) {
	t.Helper()
	out, err := exec.Command("cp", "-a", "--preserve=all", src+"/.", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
}
