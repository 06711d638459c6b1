package baseimage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
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
func BuildDeb(dir string, pkg Package) (string, error) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		return "", fmt.Errorf("%w: dpkg-deb is not installed (Debian package dpkg)", ErrUnavailable)
	}
	tree, err := os.MkdirTemp(dir, pkg.Name+"-tree-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tree)
	write := func(rel, content string, mode os.FileMode) error {
		full := filepath.Join(tree, rel)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			return err
		}
		return os.Chmod(full, mode) // whatever the umask
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
		if err := write(name, pkg.Files[name], mode); err != nil {
			return "", err
		}
	}
	control := "Package: " + pkg.Name + "\nVersion: " + pkg.Version +
		"\nArchitecture: all\nMaintainer: unionmount tests <tests@unionmount.invalid>\nDescription: a package for container tests\n"
	if err := write("DEBIAN/control", control, 0o644); err != nil {
		return "", err
	}
	if len(pkg.Conffiles) > 0 {
		if err := write("DEBIAN/conffiles", strings.Join(pkg.Conffiles, "\n")+"\n", 0o644); err != nil {
			return "", err
		}
	}
	deb := filepath.Join(dir, pkg.Name+"_"+pkg.Version+"_all.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb --build %s: %v: %s", pkg.Name, err, lastLines(string(out), 3))
	}
	return deb, nil
}
