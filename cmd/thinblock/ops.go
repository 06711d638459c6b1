package main

import (
	"errors"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/control"
)

// poolOps are the operations the volume and status commands run, on a
// pool this command opened or, when a server holds the pool, through its
// control socket: the same code prints the same output either way.
type poolOps interface {
	CreateVolumeWith(id, size uint64, a thinblock.Attrs) error
	SnapshotWith(id, origin uint64, a thinblock.Attrs) error
	DeleteVolumes(ids []uint64) error
	Volumes() ([]thinblock.VolumeInfo, error)
	Status() (thinblock.Status, error)
	Resize(size uint64) error
	Trim() (uint64, error)
	SetAttrs(id uint64, c thinblock.AttrChange) error
	Close() error
}

var (
	_ poolOps = (*openedPool)(nil)
	_ poolOps = (*control.Client)(nil)
)

// openOps opens the pool, or, when another process holds its lock,
// reaches that process's control socket; when none answers, the error
// names the process holding the lock.
func openOps(f *poolFlags) (poolOps, error) {
	p, err := openPool(f)
	var le *lockedError
	if !errors.As(err, &le) {
		if err != nil {
			return nil, err
		}
		return p, nil
	}
	meta, _, _ := f.paths()
	return dialControl(meta, le)
}
