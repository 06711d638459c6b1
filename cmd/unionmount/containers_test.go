package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/baseimage"
	"github.com/unionmount/unionmount/internal/containertest"
	"github.com/unionmount/unionmount/internal/fstest"
)

// changeScript is what the first container does to the image: it runs
// programs from the image and ones it wrote, installs, upgrades and
// purges packages with dpkg, renames and removes directories of the
// image, appends to image files, makes hard links. Each step prints
// what the test checks; then it lists the root filesystem.
const changeScript = `set -e
awk '$2 == "/" { print "rootfs-type", $3 }' /proc/mounts
awk '{ print "uid-map", $1, $2, $3 }' /proc/self/uid_map
/bin/true
printf '#!/bin/sh\necho script-ran\n' > /usr/local/bin/umt-script
chmod 0755 /usr/local/bin/umt-script
umt-script
cp /usr/bin/echo /usr/local/bin/umt-echo
umt-echo copied-binary-ran
dpkg -i /debs/umt-hello_1_all.deb /debs/umt-gone_1_all.deb >/dev/null
umt-hello
dpkg -i /debs/umt-hello_2_all.deb >/dev/null
umt-hello
dpkg --purge umt-gone >/dev/null
test ! -e /usr/share/umt-gone && echo purged
mv /usr/share/bash-completion /usr/share/bash-completion-moved
mv /etc/apt/apt.conf.d /etc/apt/conf-moved
mkdir /etc/apt/apt.conf.d
echo new > /etc/apt/apt.conf.d/99new
rm -r /usr/share/zoneinfo
rm -r /usr/share/common-licenses
mkdir /usr/share/common-licenses
echo replaced > /usr/share/common-licenses/README
echo appended >> /etc/debian_version
echo appended >> /etc/os-release
ln /usr/bin/dash /usr/local/bin/dash-link
dash-link -c 'echo hard-link-ran'
ln /usr/bin/perl5.36.0 /usr/local/bin/perl-link
echo new > /root/new
ln /root/new /root/new-link
ln -s /root/new /root/new-symlink
chmod 0600 /etc/issue
chown 1:1 /etc/issue.net
mkfifo /root/fifo
echo changes-done
`

// checkScript runs in a container of the committed image: the changes
// are there.
const checkScript = `set -e
umt-script
umt-hello
dpkg-query -W -f '${Package} ${Version} ${Status}\n' umt-hello
dpkg-query -W umt-gone 2>/dev/null || echo umt-gone-absent
test -f /usr/share/bash-completion-moved/completions/mount && test ! -e /usr/share/bash-completion && echo directory-moved
ls /etc/apt/apt.conf.d
ls /usr/share/common-licenses
test ! -e /usr/share/zoneinfo && echo zoneinfo-gone
tail -n 1 /etc/debian_version /usr/lib/os-release
stat -c '%n %h' /root/new /usr/local/bin/dash-link
echo checks-done
`

// scenario is what one storage set-up made of the same steps.
type scenario struct {
	changes, checks string
	// seen is what the first container saw after its changes,
	// committed what a container of the committed image sees, layer the
	// committed layer itself.
	seen, committed, layer containertest.Listing
	diff                   []string
	// naiveDiff: c/storage commits by comparing trees (any mount_program).
	naiveDiff bool
}

// runScenario imports the base image, runs changeScript in a container,
// commits it and runs checkScript in a container of the commit.
func runScenario(t *testing.T, p *containertest.Podman, tarball, debs string) *scenario {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("%s: %s", p.Name(), time.Since(start).Round(time.Second)) }()
	p.Import(t, tarball, "localhost/umt-base")
	run := append([]string{"run"}, containertest.RunArgs()...)
	out := p.Run(t, append(run, "--name", "work", "--volume", debs+":/debs:ro", "localhost/umt-base",
		"sh", "-c", changeScript+containertest.ListScript, "sh", "/debs")...)
	s := &scenario{changes: out, naiveDiff: p.MountProgram != ""}
	// The set-up is the one meant: the union (or kernel overlay) under
	// the container's root, and subordinate ids for a user's.
	wantFS := "rootfs-type overlay\n"
	if p.MountProgram != "" {
		wantFS = "rootfs-type fuse.unionmount\n"
	}
	assert.Contains(t, firstLines(out), wantFS)
	if p.User != nil {
		assert.Contains(t, firstLines(out), fmt.Sprintf("uid-map 0 %d 1\n", p.User.UID))
	} else {
		assert.Contains(t, firstLines(out), "uid-map 0 0 4294967295\n")
	}
	var err error
	s.seen, err = containertest.ParseListing(out)
	require.NoError(t, err)
	s.diff = strings.Split(strings.TrimSpace(p.Run(t, "diff", "work")), "\n")
	p.Run(t, "commit", "--quiet", "work", "localhost/umt-changed")
	out = p.Run(t, append(run, "--rm", "localhost/umt-changed", "sh", "-c", checkScript+containertest.ListScript, "sh")...)
	s.checks = out
	s.committed, err = containertest.ParseListing(out)
	require.NoError(t, err)
	s.layer = containertest.LayerListing(t, p, "localhost/umt-changed")
	p.Run(t, "rm", "work")
	return s
}

// check asserts what every storage set-up must show.
func (s *scenario) check(t *testing.T) {
	t.Helper()
	for _, want := range []string{"script-ran\n", "copied-binary-ran\n", "hello 1\n", "hello 2\n", "purged\n",
		"hard-link-ran\n", "changes-done\n"} {
		assert.Contains(t, firstLines(s.changes), want)
	}
	for _, want := range []string{"script-ran\n", "hello 2\n", "umt-hello 2 install ok installed\n", "umt-gone-absent\n",
		"directory-moved\n", "99new\n", "README\n", "zoneinfo-gone\n", "appended\n", "/root/new 2\n", "checks-done\n"} {
		assert.Contains(t, firstLines(s.checks), want)
	}
	assert.NotContains(t, firstLines(s.checks), "GPL", "common-licenses holds only what the container wrote")
	for _, want := range []string{"A /usr/bin/umt-hello", "A /usr/local/bin/umt-script", "C /etc/debian_version",
		"A /etc/apt/conf-moved", "D /usr/share/zoneinfo", "D /usr/share/bash-completion", "A /usr/share/bash-completion-moved"} {
		assert.Contains(t, s.diff, want, "podman diff")
	}
	// What the first container saw is what its commit shows.
	assertSame(t, "the committed image, against what the container saw", dirLinks(s.seen), dirLinks(s.committed), func(p string) bool {
		return p == "/debs" || (s.naiveDiff && hardLinkedImageFiles[p])
	})
}

// hardLinkedImageFiles are image files changeScript hard-links, and the
// links. c/storage commits a container whose storage has a mount_program
// by comparing its tree with the image's ("naive diff", as with
// fuse-overlayfs): a file of the image that only gained a link did not
// change, so it is left out of the layer and the new name becomes a copy
// (link count 1), where kernel overlay's copy-up puts both in the layer.
var hardLinkedImageFiles = map[string]bool{"/usr/bin/dash": true, "/usr/local/bin/dash-link": true,
	"/usr/bin/perl5.36.0": true, "/usr/local/bin/perl-link": true}

// TestContainersRunOnUnionmount runs podman with unionmount as overlay's
// mount_program, as root and rootless, and the same steps on kernel
// overlay (podman's own driver): both pass the same checks, and what the
// containers see, the committed layers and podman diff are the same but
// for the differences the README lists.
func TestContainersRunOnUnionmount(t *testing.T) {
	tarball, bin := containerSetup(t)
	debs := t.TempDir()
	for _, d := range []string{debs, filepath.Dir(debs)} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	containertest.BuildDeb(t, debs, helloPackage("1"))
	containertest.BuildDeb(t, debs, helloPackage("2"))
	containertest.BuildDeb(t, debs, containertest.Package{Name: "umt-gone", Version: "1",
		Files: map[string]string{"/usr/share/umt-gone/a": "a\n", "/usr/share/umt-gone/sub/b": "b\n"}})

	for _, tc := range []struct {
		name     string
		rootless bool
	}{{"as root", false}, {"as an ordinary user", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var user *containertest.User
			mountProgram := bin
			if tc.rootless {
				user = containertest.RequireUser(t)
				// The user must reach the binary.
				dir := t.TempDir()
				require.NoError(t, os.Chmod(dir, 0o755))
				require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
				data, err := os.ReadFile(bin)
				require.NoError(t, err)
				mountProgram = filepath.Join(dir, "unionmount")
				require.NoError(t, os.WriteFile(mountProgram, data, 0o755))
			}
			ref := runScenario(t, containertest.NewPodman(t, "", user), tarball, debs)
			ref.check(t)
			got := runScenario(t, containertest.NewPodman(t, mountProgram, user), tarball, debs)
			got.check(t)
			compareWithKernelOverlay(t, ref, got)
		})
	}
}

// containerSetup skips the test where podman, FUSE, kernel overlay or
// the base image are missing, and returns the image tarball and the
// union's binary.
func containerSetup(t *testing.T) (tarball, bin string) {
	t.Helper()
	containertest.RequirePodman(t)
	fstest.RequireFUSE(t)
	fstest.RequireKernelOverlay(t)
	tarball, err := baseimage.Tarball(baseimage.DefaultCacheDir)
	if errors.Is(err, baseimage.ErrUnavailable) {
		t.Skip(err)
	}
	require.NoError(t, err)
	return tarball, binary(t)
}

// helloPackage is umt-hello at version: a program, a data file and a
// conffile.
func helloPackage(version string) containertest.Package {
	return containertest.Package{Name: "umt-hello", Version: version, Conffiles: []string{"/etc/umt-hello.conf"},
		Files: map[string]string{
			"/usr/bin/umt-hello":        "#!/bin/sh\necho hello " + version + "\n",
			"/usr/share/umt-hello/data": strings.Repeat("data "+version+"\n", 1000),
			"/etc/umt-hello.conf":       "setting=" + version + "\n",
		}}
}

// containerfile builds a layer per step on the base image: a copied-in
// package installed, a directory of the image renamed and a file
// appended to, then in the renamed directory a file removed, an image
// directory removed and a hard link to a file of an earlier layer.
const containerfile = `FROM localhost/umt-base
COPY umt-hello_1_all.deb /tmp/
RUN dpkg -i /tmp/umt-hello_1_all.deb && rm /tmp/umt-hello_1_all.deb
RUN mv /usr/share/bash-completion /usr/share/moved && echo step >> /etc/debian_version && umt-hello > /hello.out
RUN rm -r /usr/share/zoneinfo /usr/share/moved/completions/mount && ln /usr/bin/umt-hello /usr/local/bin/hello-link && cat /hello.out /etc/debian_version > /summary
`

// TestBuildahBuildsOnUnionmount builds an image of several layers with
// buildah bud, each step's container on a union of all the layers below,
// with unionmount as mount_program and on kernel overlay: the same
// layers, and a container of each image sees the same tree.
func TestBuildahBuildsOnUnionmount(t *testing.T) {
	if _, err := exec.LookPath("buildah"); err != nil {
		t.Skip("needs buildah (Debian package buildah)")
	}
	tarball, bin := containerSetup(t)
	context := t.TempDir()
	containertest.BuildDeb(t, context, helloPackage("1"))
	require.NoError(t, os.WriteFile(filepath.Join(context, "Containerfile"), []byte(containerfile), 0o644))
	build := func(p *containertest.Podman) (containertest.Listing, string) {
		start := time.Now()
		defer func() { t.Logf("%s: %s", p.Name(), time.Since(start).Round(time.Second)) }()
		p.Import(t, tarball, "localhost/umt-base")
		bud := []string{"bud", "--quiet", "--layers", "--isolation", "oci", "--runtime", "runc", "--network", "none"}
		for _, a := range containertest.RunArgs() {
			if strings.HasPrefix(a, "--ulimit=") {
				bud = append(bud, a)
			}
		}
		p.Buildah(t, append(bud, "--tag", "localhost/umt-built", context)...)
		layers := strings.TrimSpace(p.Run(t, "image", "inspect", "--format", "{{len .RootFS.Layers}}", "localhost/umt-built"))
		out := p.Run(t, append(append([]string{"run"}, containertest.RunArgs()...), "--rm", "localhost/umt-built", "sh", "-c",
			"cat /summary\n"+containertest.ListScript, "sh")...)
		assert.Contains(t, firstLines(out), "hello 1\n", p.Name())
		assert.Contains(t, firstLines(out), "step\n", p.Name())
		l, err := containertest.ParseListing(out)
		require.NoError(t, err)
		for _, gone := range []string{"/usr/share/zoneinfo", "/usr/share/bash-completion", "/usr/share/moved/completions/mount", "/tmp/umt-hello_1_all.deb"} {
			assert.NotContains(t, l, gone, p.Name())
		}
		assert.Contains(t, l, "/usr/share/moved/completions/umount", p.Name())
		return l, layers
	}
	ref, refLayers := build(containertest.NewPodman(t, "", nil))
	got, gotLayers := build(containertest.NewPodman(t, bin, nil))
	assert.Equal(t, "5", refLayers, "the base and a layer per step")
	assert.Equal(t, refLayers, gotLayers, "layers on unionmount, against kernel overlay")
	// The link to a file of an earlier layer: see hardLinkedImageFiles.
	linked := map[string]bool{"/usr/bin/umt-hello": true, "/usr/local/bin/hello-link": true}
	assertSame(t, "the built image on unionmount, against kernel overlay", dirLinks(ref), dirLinks(got), func(p string) bool { return linked[p] || volatile(p) })
}

// compareWithKernelOverlay asserts that the union's scenario matches
// kernel overlay's, but for what the README lists: directories' link
// counts (kernel overlay shows 1 for a merged directory), and how
// c/storage's naive diff writes a layer (see hardLinkedImageFiles; a
// directory whose only change is its time is left out; a directory
// removed and made again gets a whiteout per name rather than an opaque
// marker). The removals themselves are checked in the committed image.
func compareWithKernelOverlay(t *testing.T, ref, got *scenario) {
	t.Helper()
	assertSame(t, "what the container saw on unionmount, against kernel overlay", dirLinks(ref.seen), dirLinks(got.seen), volatile)
	assertSame(t, "the committed image on unionmount, against kernel overlay", dirLinks(ref.committed), dirLinks(got.committed),
		func(p string) bool { return volatile(p) || hardLinkedImageFiles[p] })
	layerEntry := func(l containertest.Listing) func(string) bool {
		return func(p string) bool {
			d := l[p]
			return volatile(p) || hardLinkedImageFiles[p] || strings.Contains(p, "/.wh.") || strings.HasPrefix(d, "5 ")
		}
	}
	assertSame(t, "the committed layer on unionmount, against kernel overlay", ref.layer, got.layer, func(p string) bool {
		return layerEntry(ref.layer)(p) || layerEntry(got.layer)(p)
	})
	// podman diff: additions and changes of everything but directories.
	changes := func(s *scenario) []string {
		var out []string
		for _, line := range s.diff {
			kind, p, _ := strings.Cut(line, " ")
			if kind != "D" && !hardLinkedImageFiles[p] && !strings.HasPrefix(s.committed[p], "d ") && p != "/debs" {
				out = append(out, line)
			}
		}
		return out
	}
	assert.ElementsMatch(t, changes(ref), changes(got), "podman diff: what was added or changed")
}

// dirLinks leaves directories' link counts out of l: kernel overlay
// shows 1 for a directory merged from several layers, unionmount the
// upper directory's count (see the README).
func dirLinks(l containertest.Listing) containertest.Listing {
	out := containertest.Listing{}
	for p, d := range l {
		if strings.HasPrefix(d, "d ") {
			d = d[:strings.LastIndex(d, " ")]
		}
		out[p] = d
	}
	return out
}

// volatile are the paths whose content differs from run to run whatever
// the storage: dpkg's log has the time of each step.
func volatile(p string) bool {
	return p == "/var/log/dpkg.log"
}

// assertSame fails the test with one line per difference.
func assertSame(t *testing.T, what string, want, got containertest.Listing, skip func(string) bool) {
	t.Helper()
	if d := containertest.Differences(want, got, skip); len(d) > 0 {
		t.Errorf("%s: %d differences:\n%s", what, len(d), strings.Join(d, "\n"))
	}
}

// firstLines is a script's output before its listing.
func firstLines(out string) string {
	before, _, _ := strings.Cut(out, "L\t")
	return before
}
