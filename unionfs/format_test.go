package unionfs_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pkg/xattr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// Each whiteout format leaves its own markers in the upper, and the
// merged view is the same in all of them.
func TestWhiteoutFormatsLeaveTheirMarkers(t *testing.T) {
	for _, format := range []string{"chardev", "xattr", "aufs"} {
		t.Run(format, func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"d/gone": "x", "d/kept": "y", "dir/f": "z"})
			uniontest.Mount(t, l, "whiteout="+format)
			require.NoError(t, os.Remove(l.Mount+"/d/gone"))
			require.NoError(t, os.RemoveAll(l.Mount+"/dir"))
			require.NoError(t, os.Mkdir(l.Mount+"/dir", 0o755))
			assert.Equal(t, []string{"kept"}, names(t, l.Mount+"/d"))
			assert.Empty(t, names(t, l.Mount+"/dir"), "the new dir does not merge the old one")
			switch format {
			case "chardev":
				assert.Equal(t, uint32(unix.S_IFCHR), lstat(t, l.Upper+"/d/gone").Mode&unix.S_IFMT)
				v, err := xattr.LGet(l.Upper+"/dir", "trusted.overlay.opaque")
				require.NoError(t, err)
				assert.Equal(t, "y", string(v))
			case "xattr":
				st := lstat(t, l.Upper+"/d/gone")
				assert.Equal(t, uint32(unix.S_IFREG), st.Mode&unix.S_IFMT)
				assert.Equal(t, int64(0), st.Size)
				_, err := xattr.LGet(l.Upper+"/d/gone", "trusted.overlay.whiteout")
				assert.NoError(t, err)
				v, err := xattr.LGet(l.Upper+"/d", "trusted.overlay.opaque")
				require.NoError(t, err)
				assert.Equal(t, "x", string(v), "the directory is marked as holding xattr whiteouts")
			case "aufs":
				assert.FileExists(t, l.Upper+"/d/.wh.gone")
				assert.NoFileExists(t, l.Upper+"/d/gone")
				assert.FileExists(t, l.Upper+"/dir/.wh..wh..opq")
			}
			// The markers themselves never show, and cannot be made.
			_, err := os.Lstat(l.Mount + "/d/.wh.gone")
			assert.True(t, os.IsNotExist(err))
			assert.Equal(t, unix.EPERM, errnoOf(os.WriteFile(l.Mount+"/d/.wh.kept", nil, 0o644)))
			// Re-creating the name drops the whiteout.
			require.NoError(t, os.WriteFile(l.Mount+"/d/gone", []byte("new"), 0o644))
			assert.Equal(t, "new", readFile(t, l.Mount+"/d/gone"))
			assert.NoFileExists(t, l.Upper+"/d/.wh.gone")
		})
	}
}

// A lower layer holding all three formats reads the same in every mode.
func TestAllFormatsAreReadInEveryMode(t *testing.T) {
	fstest.RequireRoot(t)
	for _, format := range []string{"chardev", "xattr", "aufs"} {
		t.Run(format, func(t *testing.T) {
			l := fstest.NewLayers(t, 2)
			top, bottom := l.Lowers[0], l.Lowers[1]
			fstest.WriteTree(t, bottom, fstest.Spec{"a": "1", "b": "2", "c": "3", "keep": "4",
				"xo/old": "5", "ao/old": "6", "plain/old": "7"})
			require.NoError(t, unix.Mknod(filepath.Join(top, "a"), unix.S_IFCHR, 0))
			require.NoError(t, os.WriteFile(filepath.Join(top, "b"), nil, 0o644))
			require.NoError(t, xattr.LSet(filepath.Join(top, "b"), "trusted.overlay.whiteout", nil))
			require.NoError(t, xattr.LSet(top, "trusted.overlay.opaque", []byte("x")))
			require.NoError(t, os.WriteFile(filepath.Join(top, ".wh.c"), nil, 0o444))
			fstest.WriteTree(t, top, fstest.Spec{"xo/new": "n", "ao/new": "n", "plain/new": "n"})
			require.NoError(t, xattr.LSet(filepath.Join(top, "xo"), "trusted.overlay.opaque", []byte("y")))
			require.NoError(t, os.WriteFile(filepath.Join(top, "ao", ".wh..wh..opq"), nil, 0o444))
			uniontest.Mount(t, l, "whiteout="+format)
			assert.Equal(t, []string{"ao", "keep", "plain", "xo"}, names(t, l.Mount))
			for _, gone := range []string{"a", "b", "c", ".wh.c"} {
				_, err := os.Lstat(l.Mount + "/" + gone)
				assert.True(t, os.IsNotExist(err), "%s is hidden", gone)
			}
			assert.Equal(t, []string{"new"}, names(t, l.Mount+"/xo"), "xattr-opaque dir")
			assert.Equal(t, []string{"new"}, names(t, l.Mount+"/ao"), "aufs-opaque dir")
			assert.Equal(t, []string{"new", "old"}, names(t, l.Mount+"/plain"), "merged dir")
		})
	}
}
