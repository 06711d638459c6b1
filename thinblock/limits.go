package thinblock

import (
	"fmt"
	"syscall"
)

// MaxVolumeID is the largest volume id dm-thin accepts (its device ids
// are 24 bits); thin_dump and thin_restore could not carry a larger one.
const MaxVolumeID = 1<<24 - 1

// CheckNewVolumeID refuses an id a new volume may not take.
func CheckNewVolumeID(id uint64) error {
	if id > MaxVolumeID {
		return fmt.Errorf("volume id %d is above dm-thin's 24-bit limit (%d), so thin_dump could not export it: %w",
			id, MaxVolumeID, syscall.EINVAL)
	}
	return nil
}
