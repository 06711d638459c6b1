// Package baseimage builds, once per machine, a small Debian root
// filesystem as a tarball (debootstrap --variant=minbase from the apt
// source this machine is configured with), for container tests and
// benchmarks that cannot pull an image from a registry; and tiny .deb
// packages (dpkg-deb) for those tests to install.
//
// The tarball is cached outside any repository, keyed by suite and
// architecture, and published by a rename, so an interrupted build never
// leaves a half tarball behind; a lock file serializes builds by
// concurrent test processes. It drives debootstrap and tar and knows
// nothing of container engines.
package baseimage

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultCacheDir is where tarballs are kept between runs.
const DefaultCacheDir = "/var/cache/unionmount-tests"

// ErrUnavailable wraps every reason the image cannot be had here (no
// root, no debootstrap, no usable apt source, a failed download): tests
// skip on it rather than fail.
var ErrUnavailable = errors.New("no Debian base image")

// Source is the apt repository the image is bootstrapped from.
type Source struct {
	Mirror string // e.g. http://deb.debian.org/debian
	Suite  string // e.g. bookworm
}

// Tarball returns the path of the cached minbase tarball for this
// machine's Debian suite and architecture, building it first if needed
// (about 45 seconds). Errors wrap ErrUnavailable.
func Tarball(cacheDir string) (string, error) {
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("%w: debootstrap needs root", ErrUnavailable)
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", fmt.Errorf("%w: debootstrap is not installed (Debian package debootstrap)", ErrUnavailable)
	}
	src, err := AptSource("/etc/apt")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	arch := debianArch()
	final := filepath.Join(cacheDir, fmt.Sprintf("debian-%s-%s-minbase.tar", src.Suite, arch))
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	unlock, err := lock(filepath.Join(cacheDir, ".lock"))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer unlock()
	// Another process may have built it while this one waited.
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := build(src, arch, cacheDir, final); err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return final, nil
}

// build bootstraps into a scratch directory beside final, trims what a
// test never reads (package caches, lists, documentation), packs it and
// renames the tarball into place; the scratch is removed whatever
// happens.
func build(src Source, arch, cacheDir, final string) error {
	scratch, err := os.MkdirTemp(cacheDir, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	rootfs := filepath.Join(scratch, "rootfs")
	out, err := exec.Command("debootstrap", "--variant=minbase", "--arch="+arch, src.Suite, rootfs, src.Mirror).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debootstrap %s %s: %v: %s", src.Suite, src.Mirror, err, lastLines(string(out), 5))
	}
	for _, glob := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
		"usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"} {
		matches, _ := filepath.Glob(filepath.Join(rootfs, glob))
		for _, m := range matches {
			if st, err := os.Lstat(m); err == nil && st.Name() != "partial" && st.Name() != "lock" {
				if err := os.RemoveAll(m); err != nil {
					return err
				}
			}
		}
	}
	tmp := filepath.Join(scratch, "rootfs.tar")
	if out, err := exec.Command("tar", "--numeric-owner", "--xattrs", "-C", rootfs, "-cf", tmp, ".").CombinedOutput(); err != nil {
		return fmt.Errorf("tar the root filesystem: %v: %s", err, lastLines(string(out), 3))
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	return os.Rename(tmp, final)
}

// lock takes an exclusive lock on path, waiting for it.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// AptSource finds the Debian main archive among the apt sources under
// dir (sources.list and sources.list.d, one-line and deb822 formats): the
// first "deb" entry whose suite has no "-" (not -updates or -security).
func AptSource(dir string) (Source, error) {
	files := []string{filepath.Join(dir, "sources.list")}
	more, _ := filepath.Glob(filepath.Join(dir, "sources.list.d", "*"))
	files = append(files, more...)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var found []Source
		if strings.HasSuffix(f, ".sources") {
			found = parseDeb822(string(data))
		} else {
			found = parseOneLine(string(data))
		}
		for _, s := range found {
			if !strings.Contains(s.Suite, "-") && !strings.Contains(s.Suite, "/") && strings.Contains(s.Mirror, "debian") {
				return s, nil
			}
		}
	}
	return Source{}, fmt.Errorf("no Debian archive among the apt sources in %s", dir)
}

func parseOneLine(text string) []Source {
	var out []Source
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		fields = fields[1:]
		if strings.HasPrefix(fields[0], "[") { // options: [arch=amd64 signed-by=...]
			for len(fields) > 0 && !strings.HasSuffix(fields[0], "]") {
				fields = fields[1:]
			}
			if len(fields) > 0 {
				fields = fields[1:]
			}
		}
		if len(fields) >= 2 {
			out = append(out, Source{Mirror: fields[0], Suite: fields[1]})
		}
	}
	return out
}

func parseDeb822(text string) []Source {
	var out []Source
	for _, stanza := range strings.Split(text, "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if !strings.Contains(" "+fields["types"]+" ", " deb ") || strings.EqualFold(fields["enabled"], "no") {
			continue
		}
		for _, uri := range strings.Fields(fields["uris"]) {
			for _, suite := range strings.Fields(fields["suites"]) {
				out = append(out, Source{Mirror: uri, Suite: suite})
			}
		}
	}
	return out
}

// debianArch is dpkg's name for this machine's architecture.
func debianArch() string {
	if out, err := exec.Command("dpkg", "--print-architecture").Output(); err == nil {
		if a := strings.TrimSpace(string(out)); a != "" {
			return a
		}
	}
	switch runtime.GOARCH {
	case "arm":
		return "armhf"
	case "386":
		return "i386"
	}
	return runtime.GOARCH
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
