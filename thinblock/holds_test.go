package thinblock_test

import (
	"errors"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
)

// A held volume is not deleted, and a delete of several deletes none
// when one is held; a hold on a volume that is gone fails.
func TestAHeldVolumeIsNotDeleted(t *testing.T) {
	p := newMemPool(t, 16, thinblock.Options{CommitInterval: -1}).pool
	require.NoError(t, p.CreateVolume(1, testBlock))
	require.NoError(t, p.CreateVolume(2, testBlock))
	h, err := p.Hold(2, "NBD client test")
	require.NoError(t, err)

	err = p.DeleteVolumes([]uint64{1, 2})
	require.ErrorIs(t, err, syscall.EBUSY)
	var held *thinblock.HeldError
	require.True(t, errors.As(err, &held))
	assert.Equal(t, uint64(2), held.ID)
	assert.Equal(t, "volume 2 is in use: NBD client test: device or resource busy", err.Error())
	_, err = p.Details(1)
	assert.NoError(t, err, "a delete refused for one volume deletes none")

	h.Release()
	h.Release() // a second release changes nothing
	require.NoError(t, p.DeleteVolumes([]uint64{1, 2}))
	_, err = p.Hold(2, "late")
	assert.ErrorIs(t, err, thinblock.ErrNoVolume)
}
