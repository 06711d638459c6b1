package unionfs_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

// Files used while their names go away (an untar over old files, a build
// removing its temporaries) are ordinary work: the daemon logs nothing
// for them. go-fuse logged a line for each request on a nameless node.
func TestNamelessFilesLogNothing(t *testing.T) {
	for _, opts := range [][]string{{"passthrough=on"}, {"passthrough=off"}} {
		t.Run(opts[0], func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"lower": "lower"})
			m := uniontest.Mount(t, l, opts...)
			for i := 0; i < 20; i++ {
				name := fmt.Sprintf("%s/f%d", l.Mount, i)
				require.NoError(t, os.WriteFile(name, []byte("data"), 0o644))
				f, err := os.OpenFile(name, os.O_RDWR, 0)
				require.NoError(t, err)
				require.NoError(t, os.Remove(name))
				_, err = f.Stat()
				assert.NoError(t, err)
				assert.ErrorIs(t, os.Chmod(name, 0o600), os.ErrNotExist, "the name is gone")
				require.NoError(t, f.Chmod(0o600))
				require.NoError(t, f.Close())
			}
			r, err := os.Open(l.Mount + "/lower")
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(l.Mount+"/other", []byte("other"), 0o644))
			require.NoError(t, os.Rename(l.Mount+"/other", l.Mount+"/lower"))
			require.NoError(t, r.Close())
			assert.Empty(t, m.Logs())
		})
	}
}
