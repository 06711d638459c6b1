package unionfs

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

// Where a mounter may not give files away (an ordinary user, or ids its
// namespace does not map), xattr_permissions keeps the owner and mode a
// file should have in an xattr and shows those instead of the real ones,
// as fuse-overlayfs and containers/storage do.
const (
	// containersOverrideXattr is what containers/storage writes and
	// xattr_permissions=2 writes here.
	containersOverrideXattr = "user.containers.override_stat"
	// fuseOverlayOverrideXattr is fuse-overlayfs's unprivileged name.
	fuseOverlayOverrideXattr = "user.fuseoverlayfs.override_stat"
	// privilegedOverrideXattr is fuse-overlayfs's xattr_permissions=1
	// name, in a namespace only a privileged mounter may write.
	privilegedOverrideXattr = "security.fuseoverlayfs.override_stat"
)

// overrideXattrs are read in this order; the first one present wins.
var overrideXattrs = []string{containersOverrideXattr, fuseOverlayOverrideXattr, privilegedOverrideXattr}

// isOverrideXattr reports whether name is one of the override xattrs,
// which a mount using them hides from its users.
func isOverrideXattr(name string) bool {
	for _, n := range overrideXattrs {
		if n == name {
			return true
		}
	}
	return false
}

// statOverride is the owner and mode an override xattr records: the ids
// as the layers keep them (before uidmapping=), the permission bits and,
// when recorded, the file type and device number.
type statOverride struct {
	uid, gid uint32
	perm     uint32
	// fileType is an S_IFMT value, or 0 when the real type stands.
	fileType uint32
	rdev     uint64
}

// parseOverride reads "UID:GID:MODE[:TYPE]", MODE octal, TYPE one of
// file, dir, symlink, pipe, socket, char-MAJOR-MINOR, block-MAJOR-MINOR.
func parseOverride(v string) (statOverride, bool) {
	parts := strings.Split(strings.TrimRight(v, "\x00"), ":")
	if len(parts) < 3 || len(parts) > 4 {
		return statOverride{}, false
	}
	uid, err1 := strconv.ParseUint(parts[0], 10, 32)
	gid, err2 := strconv.ParseUint(parts[1], 10, 32)
	mode, err3 := strconv.ParseUint(parts[2], 8, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return statOverride{}, false
	}
	o := statOverride{uid: uint32(uid), gid: uint32(gid), perm: uint32(mode) & 0o7777, fileType: uint32(mode) & unix.S_IFMT}
	if len(parts) == 4 {
		t, rdev, ok := parseOverrideType(parts[3])
		if !ok {
			return statOverride{}, false
		}
		o.fileType, o.rdev = t, rdev
	}
	return o, true
}

func parseOverrideType(s string) (uint32, uint64, bool) {
	switch s {
	case "file":
		return unix.S_IFREG, 0, true
	case "dir":
		return unix.S_IFDIR, 0, true
	case "symlink":
		return unix.S_IFLNK, 0, true
	case "pipe":
		return unix.S_IFIFO, 0, true
	case "socket":
		return unix.S_IFSOCK, 0, true
	}
	kind, nums, ok := strings.Cut(s, "-")
	if !ok || (kind != "char" && kind != "block") {
		return 0, 0, false
	}
	maj, min, ok := strings.Cut(nums, "-")
	if !ok {
		return 0, 0, false
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	t := uint32(unix.S_IFCHR)
	if kind == "block" {
		t = unix.S_IFBLK
	}
	return t, unix.Mkdev(uint32(ma), uint32(mi)), true
}

func (o statOverride) String() string {
	return fmt.Sprintf("%d:%d:0%o", o.uid, o.gid, o.perm)
}

// apply puts the recorded owner and mode into st.
func (o statOverride) apply(st *unix.Stat_t) {
	st.Uid, st.Gid, st.Mode = o.uid, o.gid, o.mode(st.Mode)
	if o.fileType != 0 {
		st.Rdev = o.rdev
	}
}

// applyAttr is apply for attributes already in the kernel's form.
func (o statOverride) applyAttr(a *fuse.Attr) {
	a.Uid, a.Gid, a.Mode = o.uid, o.gid, o.mode(a.Mode)
	if o.fileType != 0 {
		a.Rdev = uint32(o.rdev)
	}
}

// mode is the recorded mode, with the real type unless one is recorded.
func (o statOverride) mode(real uint32) uint32 {
	t := real & unix.S_IFMT
	if o.fileType != 0 {
		t = o.fileType
	}
	return t | o.perm
}

// overrideOf reads the override of the object at path in layer fd
// (dirfd-relative; "" with fd an open file's fd).
func (u *FS) overrideOf(fd int, path string) (statOverride, bool) {
	for _, name := range overrideXattrs {
		var v []byte
		var err error
		if path == "" {
			v, err = fgetxattr(fd, name)
		} else {
			v, err = sysx.Getxattr(fd, path, name)
		}
		if err == nil {
			return parseOverride(string(v))
		}
	}
	return statOverride{}, false
}

// applyOverride shows ref's recorded owner and mode in st, when the mount
// uses xattr_permissions and ref has them.
func (u *FS) applyOverride(ref layerRef, st *unix.Stat_t) {
	if u.opts.XattrPermissions == 0 || st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return
	}
	if o, ok := u.overrideOf(ref.l.fd, rel(ref.path)); ok {
		o.apply(st)
	}
}

// applyOverrideFd is applyOverride for the open file fd.
func (u *FS) applyOverrideFd(fd int, a *fuse.Attr) {
	if u.opts.XattrPermissions == 0 {
		return
	}
	if o, ok := u.overrideOf(fd, ""); ok {
		o.applyAttr(a)
	}
}

// overrideXattr is the name this mount records overrides under.
func (u *FS) overrideXattr() string {
	if u.opts.XattrPermissions == 1 {
		return privilegedOverrideXattr
	}
	return containersOverrideXattr
}

// setOverride records owner and mode for the object at path, relative
// to dirfd ("": dirfd is the object): uid or gid -1 keeps the recorded
// (or real) one, perm ^uint32(0) keeps the mode.
func (u *FS) setOverride(dirfd int, path string, uid, gid int, perm uint32) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, path, &st, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil // symlinks cannot hold user.* xattrs
	}
	o, ok := u.overrideOf(dirfd, path)
	if !ok {
		o = statOverride{uid: st.Uid, gid: st.Gid, perm: st.Mode & 0o7777}
	}
	if uid >= 0 {
		o.uid = uint32(uid)
	}
	if gid >= 0 {
		o.gid = uint32(gid)
	}
	if perm != ^uint32(0) {
		o.perm = perm & 0o7777
	}
	v := o.String()
	if o.fileType != 0 {
		v += ":" + formatOverrideType(o.fileType, o.rdev)
	}
	if path == "" {
		return unix.Fsetxattr(dirfd, u.overrideXattr(), []byte(v), 0)
	}
	return sysx.Setxattr(dirfd, path, u.overrideXattr(), []byte(v), 0)
}

func formatOverrideType(t uint32, rdev uint64) string {
	switch t {
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "pipe"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return fmt.Sprintf("char-%d-%d", unix.Major(rdev), unix.Minor(rdev))
	case unix.S_IFBLK:
		return fmt.Sprintf("block-%d-%d", unix.Major(rdev), unix.Minor(rdev))
	}
	return "file"
}

// fgetxattr reads a short xattr of an open file.
func fgetxattr(fd int, name string) ([]byte, error) {
	buf := make([]byte, 128)
	n, err := unix.Fgetxattr(fd, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}
