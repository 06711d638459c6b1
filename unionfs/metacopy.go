package unionfs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Metadata-only copy-up, in kernel overlay's metacopy format.
//
// With metacopy=on a change of metadata alone (chmod, chown, utimes, an
// xattr) copies up a regular file as an upper file of the same size with
// no data blocks, marked with the overlay "metacopy" xattr. Its data is
// still the lower file's at the same path: reads go there, and the first
// change of data (an open for writing, a truncation, a link or a rename)
// copies the data up whole. Kernel overlay mounted with metacopy=on reads
// such a layer, and this union reads the ones it writes. Like the kernel,
// it looks for metadata-only files only with metacopy=on, which keeps
// the xattr read off every other lookup.

// maybeMetacopy reports whether an upper object with attributes st could
// be a metadata-only copy, so that only those pay for the xattr read.
func (u *FS) maybeMetacopy(st *unix.Stat_t) bool {
	return u.opts.Metacopy && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size > 0 && len(u.lowers) > 0
}

// findMetacopyData completes the lookup of a metadata-only upper file f:
// its data is the first regular file at the same path in plan, the lower
// layers below it. Kernel overlay fails such a lookup with EIO when the
// data is gone, and so does this.
func (u *FS) findMetacopyData(f *found, plan []planStep) (*found, error) {
	for _, step := range plan {
		ref := step.ref
		var st unix.Stat_t
		err := ref.l.lstat(ref.path, &st)
		if isMissingInLayer(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || u.markers.IsWhiteout(ref.l.fd, ref.path, &st) {
			break
		}
		f.state.lowers = []layerRef{ref}
		f.state.metacopy = true
		f.stat.Blocks = st.Blocks
		return f, nil
	}
	u.logger.Printf("%s: metadata-only upper file has no lower data (answered EIO)", f.top.path)
	return nil, unix.EIO
}

// showLowerBlocks reports a metadata-only file's blocks as its data's,
// as kernel overlay does, so that du counts what the file holds.
func (u *FS) showLowerBlocks(st nodeState, s *unix.Stat_t) {
	var data unix.Stat_t
	if len(st.lowers) > 0 && st.lowers[0].l.lstat(st.lowers[0].path, &data) == nil {
		s.Blocks = data.Blocks
	}
}

// copyUpMeta copies n up for a change of metadata alone: metadata only
// where metacopy is on and n is a non-empty regular file, whole
// otherwise. The caller holds ns.
func (u *FS) copyUpMeta(n *node) error {
	if u.opts.Metacopy {
		return u.copyUpAs(n, copyMetaOnly)
	}
	return u.copyUpAs(n, copyWhole)
}

// makeMetacopy creates tmp in the work dir as a metadata-only copy of a
// regular file of the given size: no data blocks, the metacopy marker.
// It needs no fsync, as it holds no data: the rename that installs it
// orders it like any other metadata.
func (u *FS) makeMetacopy(tmp string, size int64) error {
	fd, err := unix.Openat(u.work, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, size); err != nil {
		return fmt.Errorf("set size: %w", err)
	}
	return u.markers.SetMetacopy(u.work, tmp)
}

// copyUpData gives the metadata-only upper copy of n its data (none when
// withData is false, for a truncation to zero): a whole new copy is made
// in the work dir from the lower data and the upper metadata, then
// renamed over the metadata-only one, so that a crash leaves one or the
// other. The caller holds n.mu.
func (u *FS) copyUpData(n *node, withData bool) error {
	path := n.path()
	var meta unix.Stat_t
	if err := u.upper.lstat(path, &meta); err != nil {
		return err
	}
	var data unix.Stat_t
	src := n.st.lowers[0]
	if err := src.l.lstat(src.path, &data); err != nil {
		return err
	}
	tmp := tempName()
	err := u.copyFile(src, tmp, &data, withData)
	if err == nil {
		u.crashPoint(CrashCopyUpData)
		err = u.copyMetadata(layerRef{u.upper, path}, tmp, &meta, n.StableAttr())
	}
	if err == nil {
		u.crashPoint(CrashCopyUpBeforeInstall)
		err = u.replaceFromWork(tmp, path)
	}
	if err != nil {
		unix.Unlinkat(u.work, tmp, 0)
		return err
	}
	u.crashPoint(CrashCopyUpAfterInstall)
	return nil
}
