package containertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Package is a tiny Debian package: its files by absolute path (those
// under a bin/ directory are executable), and which of them are
// conffiles.
type Package struct {
	Name, Version string
	Files         map[string]string
	Conffiles     []string
}

// BuildDeb builds pkg with dpkg-deb into dir and returns the .deb's path.
// It skips the test where dpkg-deb is missing.
func BuildDeb(t testing.TB, dir string, pkg Package) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("needs dpkg-deb (Debian package dpkg)")
	}
	tree, err := os.MkdirTemp(dir, pkg.Name+"-tree-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tree)
	write := func(rel, content string, mode os.FileMode) {
		full := filepath.Join(tree, rel)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
	names := make([]string, 0, len(pkg.Files))
	for name := range pkg.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		mode := os.FileMode(0o644)
		if strings.Contains(name, "/bin/") {
			mode = 0o755
		}
		write(name, pkg.Files[name], mode)
	}
	write("DEBIAN/control", "Package: "+pkg.Name+"\nVersion: "+pkg.Version+
		"\nArchitecture: all\nMaintainer: unionmount tests <tests@unionmount.invalid>\nDescription: a package the container tests install\n", 0o644)
	if len(pkg.Conffiles) > 0 {
		write("DEBIAN/conffiles", strings.Join(pkg.Conffiles, "\n")+"\n", 0o644)
	}
	deb := filepath.Join(dir, pkg.Name+"_"+pkg.Version+"_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build %s: %v: %s", pkg.Name, err, out)
	}
	return deb
}
