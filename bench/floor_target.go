package bench

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FloorTarget is libfuse's passthrough_hp on FUSE-over-io_uring: no
// union, one directory passed through, as the floor a FUSE daemon
// reaches on this machine. It serves a private copy of the lower layer,
// so its copy-up rows are plain writes.
const FloorTarget = "passthrough_hp-uring"

// DefaultPassthroughHP is where scripts/build-passthrough-hp.sh puts the
// binary; bookworm's libfuse (3.14) has no io_uring, so it is built from
// sid's libfuse 3.18 source.
const DefaultPassthroughHP = "/var/cache/unionmount-tests/passthrough_hp-3.18.3/passthrough_hp"

// floorTarget mounts passthrough_hp -o io_uring over a copy of the
// lower layer.
type floorTarget struct{}

func (floorTarget) Name() string   { return FloorTarget }
func (floorTarget) Family() Family { return Union }

func (floorTarget) Skip(cfg *Config) string {
	if cfg.PassthroughHPBin == "" {
		return "libfuse's passthrough_hp with io_uring is not built (scripts/build-passthrough-hp.sh builds it)"
	}
	if !isRoot() {
		return "passthrough_hp's passthrough and io_uring need root"
	}
	return uringSkip(cfg)
}

func (floorTarget) Setup(env *Env) (*Instance, error) {
	base, err := os.MkdirTemp(env.cfg.Dir, FloorTarget+"-")
	if err != nil {
		return nil, err
	}
	src, mnt := filepath.Join(base, "src"), filepath.Join(base, "merged")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return nil, err
	}
	if _, err := runCmd("cp", "-a", "--reflink=auto", env.lower, src); err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	// The create row's files, and the lower layer's twice (the untar of
	// its source and the walks of the copy), with room to spare.
	entries, err := countEntries(env.lower)
	if err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	need := uint64(env.size.files + 2*entries + 1024)
	stop, err := startPassthroughHP(env.cfg.PassthroughHPBin, src, mnt, need)
	if err != nil {
		os.RemoveAll(base)
		return nil, fmt.Errorf("mount %s: %w", FloorTarget, err)
	}
	return &Instance{Dir: mnt, teardown: func() error {
		err := stop()
		if rerr := os.RemoveAll(base); err == nil {
			err = rerr
		}
		return err
	}}, nil
}

// ringPatience is how long a daemon that answered INIT gets to show
// its io_uring descriptors.
const ringPatience = 5 * time.Second

// startPassthroughHP runs passthrough_hp in the foreground over src at
// mnt and checks that it serves over io_uring: libfuse falls back to
// /dev/fuse without a word when the kernel refuses the rings, and such
// a daemon's figures must not stand in this column. stop unmounts and
// waits for the daemon to exit (with io_uring it takes a second or two
// after the unmount to tear its rings down).
func startPassthroughHP(bin, src, mnt string, need uint64) (stop func() error, err error) {
	cmd := exec.Command(bin, "--foreground", "-o", "io_uring", src, mnt)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// passthrough_hp holds an O_PATH descriptor for every inode the
	// kernel knows: a run's 20k created files and the lower layer's 13k
	// go past the usual limit (and Go gives its children the limit it
	// found, not the one it raised). The daemon opens nothing before the
	// kernel's first request, so raising it now is in time.
	if err := raiseFileLimit(cmd.Process.Pid, need); err != nil {
		cmd.Process.Kill()
		<-exited
		return nil, err
	}
	// How the daemon ends after its unmount is its own affair; one that
	// does not end is the run's.
	stop = func() error {
		err := unmount(mnt, true)
		select {
		case <-exited:
		case <-time.After(daemonPatience):
			cmd.Process.Kill()
			<-exited
			if err == nil {
				err = fmt.Errorf("%s did not exit %v after its unmount", bin, daemonPatience)
			}
		}
		return err
	}
	deadline := time.Now().Add(daemonPatience)
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("%s exited: %v: %s", bin, err, lastLines(stderr.String(), 3))
		default:
		}
		if isFUSEMount(mnt) {
			// A stat waits for INIT's answer; libfuse registers its
			// rings right after it.
			var st unix.Stat_t
			unix.Stat(mnt, &st)
			deadline = time.Now().Add(ringPatience)
			break
		}
	}
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if countURingFDs(cmd.Process.Pid) > 0 {
			return stop, nil
		}
	}
	if isFUSEMount(mnt) {
		stop()
		return nil, fmt.Errorf("%s serves %s over /dev/fuse, not io_uring (no io_uring descriptors in /proc/%d/fd)", bin, mnt, cmd.Process.Pid)
	}
	cmd.Process.Kill()
	<-exited
	return nil, fmt.Errorf("%s did not mount %s in %v: %s", bin, mnt, daemonPatience, lastLines(stderr.String(), 3))
}

// raiseFileLimit lets process pid open at least need files: as many as
// the kernel allows one process (fs.nr_open) where the caller may raise
// hard limits (CAP_SYS_RESOURCE), else up to the hard limit it has.
func raiseFileLimit(pid int, need uint64) error {
	most := uint64(1 << 20)
	if data, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		fmt.Sscan(string(data), &most)
	}
	lim := unix.Rlimit{Cur: most, Max: most}
	if unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim) != nil {
		return fmt.Errorf("read the open-file limit of process %d", pid)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: most, Max: most}, nil); err == nil {
		return nil
	}
	lim.Cur = lim.Max
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		return fmt.Errorf("raise the open-file limit of process %d to %d: %w", pid, lim.Max, err)
	}
	if lim.Max < need {
		return fmt.Errorf("passthrough_hp keeps a descriptor open per inode the kernel knows, and this run's files need about %d; "+
			"the hard limit here is %d and this process may not raise it (no CAP_SYS_RESOURCE)", need, lim.Max)
	}
	return nil
}

// isFUSEMount reports whether dir is the root of a FUSE mount.
func isFUSEMount(dir string) bool {
	const fuseSuperMagic = 0x65735546
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == fuseSuperMagic
}

// countURingFDs counts the io_uring instances process pid holds open.
func countURingFDs(pid int) int {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if link, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && link == "anon_inode:[io_uring]" {
			n++
		}
	}
	return n
}

// countEntries counts the names under dir.
func countEntries(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(string, fs.DirEntry, error) error {
		n++
		return nil
	})
	return n, err
}
