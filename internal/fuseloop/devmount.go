package fuseloop

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A deviceMount is a mounted FUSE connection: the device fd we read and
// how to undo the mount.
type deviceMount struct {
	fd         int
	mountpoint string
	// direct is set when we mounted with mount(2) ourselves, and
	// unmount with umount(2); otherwise fusermount3 did both.
	direct bool
}

// mountDevice mounts a FUSE connection at mountpoint: with mount(2) when
// we may (root, also inside a user namespace that owns its mounts), else
// through fusermount3, as go-fuse's own mount does.
func mountDevice(mountpoint string, o *fuse.MountOptions) (*deviceMount, error) {
	if os.Geteuid() == 0 {
		fd, err := mountDirect(mountpoint, o)
		if err == nil {
			return &deviceMount{fd: fd, mountpoint: mountpoint, direct: true}, nil
		}
		if o.Debug {
			o.Logger.Printf("mount(2) of %s failed, trying fusermount3: %v", mountpoint, err)
		}
	}
	fd, err := mountWithFusermount(mountpoint, o)
	if err != nil {
		return nil, err
	}
	return &deviceMount{fd: fd, mountpoint: mountpoint}, nil
}

// mountDirect opens /dev/fuse and mounts it at mountpoint with mount(2).
func mountDirect(mountpoint string, o *fuse.MountOptions) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return -1, err
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/fuse: %w", err)
	}
	// The kernel's own parameters first; the -o strings after them are
	// the ones the fuse file system and the VFS understand (ro,
	// default_permissions, allow_other).
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&unix.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", o.MaxWrite),
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	for _, opt := range o.Options {
		// mount(2) takes these as flags, never in the data string.
		switch opt {
		case "nodev":
			flags |= unix.MS_NODEV
		case "dev":
			flags &^= unix.MS_NODEV
		case "nosuid":
			flags |= unix.MS_NOSUID
		case "suid":
			flags &^= unix.MS_NOSUID
		case "noexec":
			flags |= unix.MS_NOEXEC
		case "exec":
			flags &^= unix.MS_NOEXEC
		default:
			data = append(data, opt)
		}
	}
	if o.AllowOther {
		data = append(data, "allow_other")
	}
	source := o.FsName
	if source == "" {
		source = o.Name
	}
	fstype := "fuse"
	if o.Name != "" {
		fstype += "." + o.Name
	}
	if err := unix.Mount(source, mountpoint, fstype, flags, strings.Join(data, ",")); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mount(2) %s: %w", mountpoint, err)
	}
	return fd, nil
}

// fusermountOptions is the -o string fusermount3 is given: what mount(2)
// would get, less what fusermount3 adds itself (fd, rootmode, ids).
func fusermountOptions(o *fuse.MountOptions) string {
	opts := append([]string(nil), o.Options...)
	if o.AllowOther {
		opts = append(opts, "allow_other")
	}
	if o.FsName != "" {
		opts = append(opts, "fsname="+o.FsName)
	}
	if o.Name != "" {
		opts = append(opts, "subtype="+o.Name)
	}
	opts = append(opts, fmt.Sprintf("max_read=%d", o.MaxWrite))
	for i, s := range opts {
		// fusermount3 splits at commas and unescapes backslashes.
		opts[i] = strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `,`, `\,`)
	}
	return strings.Join(opts, ",")
}

// mountWithFusermount has the setuid fusermount3 open /dev/fuse and mount
// it, and receives the device fd over a socket pair: fusermount3 finds
// its end in _FUSE_COMMFD and sends the fd as SCM_RIGHTS.
func mountWithFusermount(mountpoint string, o *fuse.MountOptions) (int, error) {
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		return -1, err
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(pair[0]), "fusermount3 socket")
	theirs := os.NewFile(uintptr(pair[1]), "fusermount3 socket")
	defer ours.Close()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-o", fusermountOptions(o), "--", mountpoint)
	cmd.ExtraFiles = []*os.File{theirs} // fd 3 in the child
	cmd.Env = append(os.Environ(), "_FUSE_COMMFD=3")
	cmd.Stderr = &stderr
	err = cmd.Run()
	theirs.Close()
	if err != nil {
		return -1, fmt.Errorf("fusermount3 %s: %v: %s", mountpoint, err, strings.TrimSpace(stderr.String()))
	}
	return receiveFd(pair[0])
}

// receiveFd reads the one fd fusermount3 sent on socket.
func receiveFd(socket int) (int, error) {
	var data [4]byte
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(socket, data[:], oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("receive the FUSE fd: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, fmt.Errorf("receive the FUSE fd: %d control messages (%v)", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return -1, fmt.Errorf("receive the FUSE fd: %d fds (%v)", len(fds), err)
	}
	return fds[0], nil
}

// unmount removes the mount, failing (EBUSY) while it is in use, as
// go-fuse's Unmount does: a daemon told to stop keeps serving a busy
// mount rather than detach it from its users. A release of a file
// closed just before is sent asynchronously and keeps the mount busy for
// a moment: a few tries cover it.
func (m *deviceMount) unmount() error {
	var err error
	delay := time.Duration(0)
	for try := 0; try < 5; try++ {
		if err = m.unmountOnce(); err == nil {
			return nil
		}
		delay = 2*delay + 5*time.Millisecond
		time.Sleep(delay)
	}
	return err
}

func (m *deviceMount) unmountOnce() error {
	if m.direct {
		err := unix.Unmount(m.mountpoint, 0)
		if err == nil || !errors.Is(err, syscall.EPERM) {
			return err
		}
		// Mounted as root but no longer allowed to unmount (a
		// capability dropped): fusermount3 may still do it.
	}
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-u", "--", m.mountpoint)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s (%v)", strings.TrimSpace(stderr.String()), err)
	}
	return nil
}
