package unionfs

import (
	"context"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/sysx"
)

var (
	_ fs.NodeGetxattrer    = (*node)(nil)
	_ fs.NodeListxattrer   = (*node)(nil)
	_ fs.NodeSetxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer = (*node)(nil)
)

// Getxattr reads an attribute of the topmost copy. The union's own
// markers are invisible.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	u := n.ufs
	if u.hidesXattr(attr) {
		return 0, syscall.ENODATA
	}
	if u.refusesACL(attr) {
		return 0, syscall.EOPNOTSUPP
	}
	u.ns.RLock()
	defer u.ns.RUnlock()
	ref, ok := u.top(n.state(), n.path())
	if !ok {
		return 0, syscall.ENOENT
	}
	size, err := sysx.GetxattrInto(ref.l.fd, rel(ref.path), attr, dest)
	if err != nil {
		return 0, sysx.Errno(err)
	}
	return uint32(size), 0
}

// Listxattr lists the topmost copy's attributes, less the private ones.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	u := n.ufs
	u.ns.RLock()
	defer u.ns.RUnlock()
	ref, ok := u.top(n.state(), n.path())
	if !ok {
		return 0, syscall.ENOENT
	}
	names, err := sysx.Listxattr(ref.l.fd, rel(ref.path))
	if err != nil {
		return 0, sysx.Errno(err)
	}
	var b strings.Builder
	for _, name := range names {
		if u.hidesXattr(name) || u.refusesACL(name) {
			continue
		}
		b.WriteString(name)
		b.WriteByte(0)
	}
	if len(dest) == 0 {
		return uint32(b.Len()), 0
	}
	if b.Len() > len(dest) {
		return 0, syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), 0
}

// Setxattr copies the object up and sets the attribute there.
func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return n.changeXattr(attr, false, func(path string) error {
		return sysx.Setxattr(n.ufs.writeLayer(n).fd, path, attr, data, int(flags))
	})
}

// Removexattr copies the object up and removes the attribute there.
func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return n.changeXattr(attr, true, func(path string) error {
		return sysx.Removexattr(n.ufs.writeLayer(n).fd, path, attr)
	})
}

func (n *node) changeXattr(attr string, removal bool, change func(path string) error) syscall.Errno {
	u := n.ufs
	if u.hidesXattr(attr) {
		return syscall.EPERM
	}
	if u.refusesACL(attr) {
		return syscall.EOPNOTSUPP
	}
	u.ns.RLock()
	defer u.ns.RUnlock()
	if !u.writable() {
		return syscall.EROFS
	}
	ref, ok := u.top(n.state(), n.path())
	if !ok {
		return syscall.ENOENT
	}
	if !ref.l.upper && removal {
		// Removing an attribute the object lacks changes nothing and
		// must not copy it up.
		if _, err := sysx.GetxattrInto(ref.l.fd, rel(ref.path), attr, nil); err == unix.ENODATA {
			return syscall.ENODATA
		}
	}
	if err := u.copyUpMeta(n); err != nil {
		return u.errno(err)
	}
	return sysx.Errno(change(rel(n.path())))
}

// refusesACL reports whether attr is a POSIX ACL the noacl option turns
// away.
func (u *FS) refusesACL(attr string) bool {
	return u.opts.NoACL && strings.HasPrefix(attr, "system.posix_acl_")
}

// hidesXattr reports whether attr belongs to the union, not its users:
// the overlay markers, and the owner overrides of xattr_permissions.
func (u *FS) hidesXattr(attr string) bool {
	return u.markers.IsPrivateXattrIn(attr) || (u.opts.XattrPermissions != 0 && isOverrideXattr(attr))
}
