package unionfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseOptions(t *testing.T) {
	cases := []struct {
		name string
		in   []string
		want func(t *testing.T, o Options)
	}{
		{"overlay spellings", []string{"lowerdir=/a:/b,upperdir=/u,workdir=/w"}, func(t *testing.T, o Options) {
			assert.Equal(t, []string{"/a", "/b"}, o.Lowers)
			assert.Equal(t, "/u", o.Upper)
			assert.Equal(t, "/w", o.Work)
		}},
		{"short spellings across two -o", []string{"lower=/a", "upper=/u,work=/w"}, func(t *testing.T, o Options) {
			assert.Equal(t, []string{"/a"}, o.Lowers)
			assert.Equal(t, "/u", o.Upper)
		}},
		{"an escaped colon stays in the path", []string{`lower=/a\:b:/c`}, func(t *testing.T, o Options) {
			assert.Equal(t, []string{"/a:b", "/c"}, o.Lowers)
		}},
		{"an escaped comma stays in the path", []string{`lower=/a\,b,upper=/u`}, func(t *testing.T, o Options) {
			assert.Equal(t, []string{"/a,b"}, o.Lowers)
		}},
		{"generic mount options are accepted", []string{"rw,nodev,nosuid,noatime,lower=/a"}, func(t *testing.T, o Options) {
			assert.Equal(t, []string{"/a"}, o.Lowers)
		}},
		{"redirect_dir=off means follow", []string{"lower=/a,redirect_dir=off"}, func(t *testing.T, o Options) {
			assert.Equal(t, RedirectFollow, o.Redirect)
		}},
		{"redirects are on by default", []string{"lower=/a"}, func(t *testing.T, o Options) {
			assert.Equal(t, RedirectOn, o.Redirect)
		}},
		{"metacopy off by default, on when asked", []string{"lower=/a", "metacopy=on"}, func(t *testing.T, o Options) {
			assert.True(t, o.Metacopy)
		}},
		{"fsync=0 and volatile skip fsync", []string{"lower=/a,fsync=0"}, func(t *testing.T, o Options) {
			assert.True(t, o.NoFsync)
		}},
		{"aufs branches, leftmost on top", []string{"br=/a=rw:/b=ro+wh:/c=ro"}, func(t *testing.T, o Options) {
			assert.Equal(t, "/a", o.Upper)
			assert.Equal(t, []string{"/b", "/c"}, o.Lowers)
			assert.Equal(t, "aufs", o.Whiteout, "aufs branches get aufs whiteouts unless told otherwise")
		}},
		{"aufs branches default to rw on top and ro below", []string{"br=/a:/b", "whiteout=xattr"}, func(t *testing.T, o Options) {
			assert.Equal(t, "/a", o.Upper)
			assert.Equal(t, []string{"/b"}, o.Lowers)
			assert.Equal(t, "xattr", o.Whiteout)
		}},
		{"aufs branches all read-only", []string{"br=/a=ro:/b=rr"}, func(t *testing.T, o Options) {
			assert.Equal(t, "", o.Upper)
			assert.Equal(t, []string{"/a", "/b"}, o.Lowers)
		}},
		{"aufs writable branch below a read-only one: a branched union", []string{"br=/a=ro:/b=rw"}, func(t *testing.T, o Options) {
			assert.Equal(t, "", o.Upper)
			assert.Equal(t, []string{"/a", "/b"}, o.Lowers)
			assert.Equal(t, []Branch{{Path: "/a", Mode: "ro"}, {Path: "/b", Mode: "rw"}}, o.Branches)
		}},
		{"aufs several writable branches: a branched union", []string{"br=/a=rw:/b=rw+nolwh:/c"}, func(t *testing.T, o Options) {
			assert.Equal(t, []Branch{{Path: "/a", Mode: "rw"}, {Path: "/b", Mode: "rw", Attrs: "nolwh"}, {Path: "/c", Mode: "ro"}}, o.Branches)
		}},
		{"Docker's aufs mount data", []string{"br:/rw=rw:/ro1=ro+wh:/ro2=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1"}, func(t *testing.T, o Options) {
			assert.Equal(t, "/rw", o.Upper, "one writable branch on top: kernel overlay's shape")
			assert.Equal(t, []string{"/ro1", "/ro2"}, o.Lowers)
			assert.Equal(t, time.Duration(0), o.CacheTimeout, "udba=reval by default: changes underneath show")
		}},
		{"aufs udba=none caches as lowerdir mounts do", []string{"br=/a=ro:/b=rw,udba=none,create=tdp,noplink"}, func(t *testing.T, o Options) {
			assert.Equal(t, DefaultCacheTimeout, o.CacheTimeout)
			assert.Equal(t, CreateTDP, o.Create)
		}},
		{"aufs create=mfs with aufs's seconds", []string{"br=/a:/b=rw,create=mfs:30"}, func(t *testing.T, o Options) {
			assert.Equal(t, CreateMFS, o.Create)
		}},
		{"aufs create=rr", []string{"br=/a:/b=rw,create=rr"}, func(t *testing.T, o Options) {
			assert.Equal(t, CreateRR, o.Create)
		}},
		{"aufs timeout= wins over udba", []string{"br=/a=ro:/b=rw,timeout=5"}, func(t *testing.T, o Options) {
			assert.Equal(t, 5*time.Second, o.CacheTimeout)
		}},
		{"id mappings", []string{"lower=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,xattr_permissions=2"}, func(t *testing.T, o Options) {
			assert.Equal(t, uint32(100004), o.UIDMap.Shown(5))
			assert.Equal(t, uint32(1000), o.GIDMap.Shown(0))
			assert.Equal(t, 2, o.XattrPermissions)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, err := ParseOptions(c.in)
			require.NoError(t, err)
			c.want(t, o)
		})
	}
	for bad, says := range map[string]string{
		"lower": "needs a value", "frob=1": "unknown option", "redirect_dir=maybe": "redirect_dir", "fsync=2": "fsync", "rw=1": "takes no value",
		"br=/a=rw:=ro":          "no directory",
		"br=/a:/b,udba=often":   "udba",
		"br=/a:/b,create=pmfs":  "create",
		"br=/a=rw+frob:/b":      `attribute "frob"`,
		"br=/a=rw:/b=maybe":     `permission "maybe"`,
		"br=/a:/b,lowerdir=/c":  "cannot be mixed",
		"uidmapping=0:1000":     "uidmapping",
		"gidmapping=0:1:0":      "gidmapping",
		"xattr_permissions=3":   "xattr_permissions",
		"squash_to_uid=nobody":  "squash_to_uid",
		"whiteout=glitter":      "whiteout",
		"passthrough=sometimes": "passthrough",
		"metacopy=yes":          "metacopy",
		"writeback=2":           "writeback",
	} {
		_, err := ParseOptions([]string{bad})
		require.ErrorIs(t, err, ErrBadOption, bad)
		assert.Contains(t, err.Error(), says, bad)
	}
}

func TestValidateDefaultsTheWorkDirBesideTheUpper(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"l", "u", "m"} {
		require.NoError(t, os.Mkdir(filepath.Join(root, d), 0o755))
	}
	o := Options{Lowers: []string{root + "/l"}, Upper: root + "/u"}
	require.NoError(t, o.Validate(root+"/m"))
	assert.Equal(t, filepath.Join(root, ".u.unionmount-work"), o.Work)
	_, err := os.Stat(o.Work)
	assert.True(t, os.IsNotExist(err), "validation writes nothing")
}

// The option table in docs/unionmount.md is the one --help shows: both come
// from optionTable, and this keeps the documented copy in step.
// UNIONMOUNT_UPDATE_DOCS=1 rewrites it.
func TestDocumentedOptionsMatchTheTable(t *testing.T) {
	const begin, end = "<!-- options:begin", "<!-- options:end -->"
	path := "../docs/unionmount.md"
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	text := string(data)
	i, j := strings.Index(text, begin), strings.Index(text, end)
	require.True(t, i >= 0 && j > i, "%s has the option table's markers", path)
	i += strings.Index(text[i:], "\n") + 1
	if os.Getenv("UNIONMOUNT_UPDATE_DOCS") != "" {
		text = text[:i] + OptionsMarkdown() + text[j:]
		require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
		return
	}
	assert.Equal(t, OptionsMarkdown(), text[i:j], "run UNIONMOUNT_UPDATE_DOCS=1 go test -run %s ./unionfs", t.Name())
}

// Every option the parser takes is in --help, and nothing else is.
func TestHelpListsEveryOption(t *testing.T) {
	help := OptionsHelp()
	for _, s := range optionTable {
		for _, n := range s.names {
			assert.Contains(t, help, n)
			if s.ignored {
				continue
			}
			opt := n
			if s.value != "" && !s.valueOptional {
				opt += "=" + map[bool]string{true: "1", false: "x"}[strings.Contains(s.value, "on|off")]
			}
			_, err := ParseOptions([]string{opt})
			if err != nil {
				assert.NotContains(t, err.Error(), "unknown option", "%s is in the table but not parsed", n)
			}
		}
	}
	for _, n := range []string{"metacopy=", "writeback=", "timeout=", "passthrough"} {
		assert.Contains(t, help, n)
	}
}

// containers/storage, when it remaps a layer's ids, gives the layers
// above it lowerdirs of the form l/LINK/../diff1 with LINK a symlink to
// ../ID/diff, relative to its overlay dir: the kernel follows LINK before
// applying "..", so the path names ID/diff1, not l/diff1.
func TestValidateResolvesLayerPathsAsTheKernelDoes(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)
	for _, d := range []string{"l", "ID/diff", "ID/diff1", "ID/upper", "ID/work", "UP/diff", "m"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	require.NoError(t, os.Symlink("../ID/diff", filepath.Join(root, "l/LINK")))
	require.NoError(t, os.Symlink("../UP/diff", filepath.Join(root, "l/UPLINK")))
	want := filepath.Join(root, "ID/diff1")

	t.Run("lowerdir, upperdir and workdir, absolute", func(t *testing.T) {
		o, err := ParseOptions([]string{"lowerdir=" + root + "/l/LINK/../diff1:" + root + "/l/UPLINK/../../ID/diff" +
			",upperdir=" + root + "/l/LINK/../upper,workdir=" + root + "/l/LINK/../work"})
		require.NoError(t, err)
		require.NoError(t, o.Validate(root+"/m"))
		assert.Equal(t, []string{want, filepath.Join(root, "ID/diff")}, o.Lowers)
		assert.Equal(t, filepath.Join(root, "ID/upper"), o.Upper)
		assert.Equal(t, filepath.Join(root, "ID/work"), o.Work)
	})
	t.Run("relative to the working directory, as containers/storage passes them", func(t *testing.T) {
		t.Chdir(root)
		o, err := ParseOptions([]string{"lowerdir=l/LINK/../diff1,upperdir=l/LINK/../upper,workdir=l/LINK/../work"})
		require.NoError(t, err)
		require.NoError(t, o.Validate(root+"/m"))
		assert.Equal(t, []string{want}, o.Lowers)
		assert.Equal(t, filepath.Join(root, "ID/upper"), o.Upper)
	})
	t.Run("aufs branches", func(t *testing.T) {
		o, err := ParseOptions([]string{"br=" + root + "/l/LINK/../upper=rw:" + root + "/l/LINK/../diff1=ro"})
		require.NoError(t, err)
		require.NoError(t, o.Validate(root+"/m"))
		assert.Equal(t, []string{want}, o.Lowers)
		assert.Equal(t, filepath.Join(root, "ID/upper"), o.Upper)
	})
	t.Run("a path that does not resolve is still refused by name", func(t *testing.T) {
		o, err := ParseOptions([]string{"lowerdir=" + root + "/l/LINK/../nothing"})
		require.NoError(t, err)
		err = o.Validate(root + "/m")
		require.ErrorIs(t, err, ErrBadOption)
		assert.Contains(t, err.Error(), "l/LINK/../nothing does not exist")
	})
}
