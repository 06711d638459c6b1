package containertest

import (
	"errors"
	"testing"

	"github.com/unionmount/unionmount/internal/baseimage"
)

// Package is a tiny Debian package (see baseimage.Package).
type Package = baseimage.Package

// BuildDeb builds pkg with dpkg-deb into dir and returns the .deb's path.
// It skips the test where dpkg-deb is missing.
func BuildDeb(t testing.TB, dir string, pkg Package) string {
	t.Helper()
	deb, err := baseimage.BuildDeb(dir, pkg)
	if errors.Is(err, baseimage.ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return deb
}
