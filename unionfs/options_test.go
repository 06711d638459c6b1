package unionfs

import (
	"os"
	"path/filepath"
	"testing"

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
		{"fsync=0 and volatile skip fsync", []string{"lower=/a,fsync=0"}, func(t *testing.T, o Options) {
			assert.True(t, o.NoFsync)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, err := ParseOptions(c.in)
			require.NoError(t, err)
			c.want(t, o)
		})
	}
	for _, bad := range []string{"lower", "frob=1", "redirect_dir=maybe", "fsync=2", "rw=1"} {
		_, err := ParseOptions([]string{bad})
		assert.ErrorIs(t, err, ErrBadOption, bad)
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
