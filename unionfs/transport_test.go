package unionfs_test

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/internal/fstest"
	"github.com/unionmount/unionmount/unionfs"
	"github.com/unionmount/unionmount/unionfs/uniontest"
)

func TestTransportOptionAndEnvironmentChooseTheTransport(t *testing.T) {
	t.Setenv(unionfs.TransportEnv, "")
	o, err := unionfs.ParseOptions([]string{"lower=/a"})
	require.NoError(t, err)
	assert.Equal(t, "auto", o.Transport, "auto by default")

	o, err = unionfs.ParseOptions([]string{"lower=/a,transport=go-fuse"})
	require.NoError(t, err)
	assert.Equal(t, "go-fuse", o.Transport)

	_, err = unionfs.ParseOptions([]string{"lower=/a,transport=splice"})
	assert.ErrorIs(t, err, unionfs.ErrBadOption)

	t.Setenv(unionfs.TransportEnv, "dev-fuse")
	o, err = unionfs.ParseOptions([]string{"lower=/a"})
	require.NoError(t, err)
	assert.Equal(t, "dev-fuse", o.Transport, "the environment sets the default")
	o, err = unionfs.ParseOptions([]string{"lower=/a,transport=go-fuse"})
	require.NoError(t, err)
	assert.Equal(t, "go-fuse", o.Transport, "the option wins over the environment")

	t.Setenv(unionfs.TransportEnv, "bogus")
	_, err = unionfs.ParseOptions([]string{"lower=/a"})
	assert.ErrorIs(t, err, unionfs.ErrBadOption)
}

func TestEachTransportServesTheUnionAndSaysSo(t *testing.T) {
	fstest.RequireFUSE(t)
	for _, transport := range []string{"dev-fuse", "go-fuse", "auto"} {
		t.Run(transport, func(t *testing.T) {
			l := fstest.NewLayers(t, 1)
			fstest.WriteTree(t, l.Lowers[0], fstest.Spec{"f": "lower"})
			m := uniontest.Mount(t, l, "transport="+transport)
			require.NoError(t, os.WriteFile(l.Mount+"/f", []byte("upper"), 0o644))
			data, err := os.ReadFile(l.Upper + "/f")
			require.NoError(t, err)
			assert.Equal(t, "upper", string(data), "the write landed in the upper")
			mode := m.FS.Mode()
			switch transport {
			case "auto":
				assert.Contains(t, []string{"io_uring", "dev-fuse"}, mode.Transport)
				assert.Equal(t, mode.Transport == "io_uring", mode.WhyNotIOURing == "", "a reason exactly when io_uring does not serve")
			default:
				assert.Equal(t, transport, mode.Transport)
				assert.Equal(t, "transport="+transport, mode.WhyNotIOURing)
			}
		})
	}
}
