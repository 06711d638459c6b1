package baseimage

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAptSourceReadsBothFormats(t *testing.T) {
	for _, tc := range []struct {
		name, file, text string
		want             Source
	}{
		{"one-line, with options, skipping security", "sources.list",
			"# comment\ndeb http://security.debian.org/debian-security bookworm-security main\n" +
				"deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n",
			Source{"http://mirror.example/debian", "bookworm"}},
		{"deb822, skipping a disabled stanza and deb-src", "sources.list.d/debian.sources",
			"Types: deb\nURIs: http://off.example/debian\nSuites: trixie\nEnabled: no\n\n" +
				"Types: deb-src\nURIs: http://src.example/debian\nSuites: trixie\n\n" +
				"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
			Source{"http://deb.debian.org/debian", "bookworm"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.text), 0o644))
			got, err := AptSource(dir)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	_, err := AptSource(t.TempDir())
	assert.ErrorContains(t, err, "no Debian archive")
}

// The cached tarball is a whole root filesystem: it holds a shell and
// dpkg's database, and a second call returns the same file.
func TestTarballIsARootFilesystem(t *testing.T) {
	path, err := Tarball(DefaultCacheDir)
	if errors.Is(err, ErrUnavailable) {
		t.Skip(err)
	}
	require.NoError(t, err)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	seen := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		seen[h.Name] = true
	}
	for _, want := range []string{"./usr/bin/dash", "./var/lib/dpkg/status", "./usr/bin/dpkg"} {
		assert.True(t, seen[want], "%s in the tarball", want)
	}
	again, err := Tarball(DefaultCacheDir)
	require.NoError(t, err)
	assert.Equal(t, path, again)
}

// A build that fails half-way (here a debootstrap that writes part of a
// root filesystem and dies) leaves neither a tarball nor its scratch
// directory; one that succeeds publishes the whole tarball.
func TestBuildPublishesOnlyWholeTarballs(t *testing.T) {
	bin := t.TempDir()
	fake := filepath.Join(bin, "debootstrap")
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	cache := t.TempDir()
	final := filepath.Join(cache, "debian-test-amd64-minbase.tar")
	src := Source{Mirror: "http://mirror.invalid/debian", Suite: "test"}

	// The root filesystem is the next-to-last argument, the mirror the last.
	require.NoError(t, os.WriteFile(fake, []byte("#!/bin/sh\neval r=\\${$(($# - 1))}\nmkdir -p \"$r/usr/bin\" && echo x > \"$r/usr/bin/half\"\nexit 1\n"), 0o755))
	err := build(src, "amd64", cache, final)
	assert.ErrorContains(t, err, "debootstrap test http://mirror.invalid/debian")
	left, _ := os.ReadDir(cache)
	assert.Empty(t, left, "nothing left in the cache")

	require.NoError(t, os.WriteFile(fake, []byte("#!/bin/sh\neval r=\\${$(($# - 1))}\nmkdir -p \"$r/usr/bin\" \"$r/usr/share/doc/x\" && echo sh > \"$r/usr/bin/dash\"\n"), 0o755))
	require.NoError(t, build(src, "amd64", cache, final))
	left, _ = os.ReadDir(cache)
	require.Len(t, left, 1)
	assert.Equal(t, filepath.Base(final), left[0].Name())
	f, err := os.Open(final)
	require.NoError(t, err)
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		names[h.Name] = true
	}
	assert.True(t, names["./usr/bin/dash"])
	assert.False(t, names["./usr/share/doc/"], "documentation trimmed")
}
