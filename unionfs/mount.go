package unionfs

import (
	"fmt"
	"log"
	"os"
	"runtime"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fuseloop"
	"github.com/unionmount/unionmount/internal/userns"
)

// Mount mounts the union described by opts (already validated) at
// mountpoint and returns the serving FUSE server; the caller waits on it
// and unmounts through it.
func Mount(mountpoint string, opts Options, logger *log.Logger) (*fuseloop.Server, *FS, error) {
	if logger == nil {
		logger = log.New(os.Stderr, "unionmount: ", log.LstdFlags)
	}
	u, err := New(opts, logger)
	if err != nil {
		return nil, nil, err
	}
	root := &node{ufs: u, st: nodeState{upper: u.upper != nil}}
	u.root = root
	for _, l := range u.lowers {
		root.st.lowers = append(root.st.lowers, layerRef{l, ""})
	}
	// Layers change only through the mount (changing them underneath is
	// undefined, as with kernel overlay), and the kernel keeps its caches
	// right for every change made through it: names and attributes can
	// be cached for long.
	timeout := opts.CacheTimeout
	mountOpts := []string{"default_permissions"}
	if !u.writable() {
		mountOpts = append(mountOpts, "ro")
	}
	fsName := opts.FsName
	if fsName == "" {
		fsName = "unionmount"
	}
	// Without passthrough every write is a request to the daemon, unless
	// the kernel caches writes and sends them in pages, as fuse-overlayfs
	// has it do (docs/measurements.md). Passthrough writes
	// go straight to the upper file, and the two are not mixed.
	// Passthrough and the readahead setting need root of the initial
	// user namespace.
	privileged := os.Geteuid() == 0 && !userns.Inside()
	var extraCaps uint64
	passthroughPossible := opts.Passthrough && privileged
	if !passthroughPossible && !opts.NoWriteback {
		u.writeback = true
		extraCaps |= fuse.CAP_WRITEBACK_CACHE
	}
	fsopts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:  opts.AllowOther,
			Options:     mountOpts,
			FsName:      fsName,
			Name:        "unionmount",
			Debug:       opts.Debug,
			MaxWrite:    maxRequestData,
			EnableLocks: true,
			// A symlink's target never changes while its inode lives;
			// copy-up keeps it, and live branch changes drop it with
			// the inode's cached content. Starting a program reads
			// /lib64 and the loader's links: seven READLINKs per start
			// of ls from a Debian root, that the kernel now keeps.
			EnableSymlinkCaching: timeout > 0,
			// READDIRPLUS only where the kernel expects lookups to follow
			// (ls -l, du), plain READDIR for ls -f and find.
			// See killpriv.go for HANDLE_KILLPRIV_V2; ASYNC_DIO lets
			// O_DIRECT requests of one file run in parallel.
			// ATOMIC_O_TRUNC has the kernel pass O_TRUNC in OPEN
			// rather than send a truncation after it: an open copies
			// up empty before it chooses its backing file, where a
			// truncation after it would meet the open's own
			// passthrough of the lower file (ETXTBSY).
			ExtraCapabilities: fuse.CAP_READDIRPLUS_AUTO | capHandleKillprivV2 | fuse.CAP_ASYNC_DIO |
				fuse.CAP_ATOMIC_O_TRUNC | extraCaps,
			Logger: logger,
			PanicHandler: func(v any) fuse.Status {
				// A panic must never take the mount down: log it, and
				// answer the one request with EIO.
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				logger.Printf("internal fault (answered EIO): %v\n%s", v, buf)
				return fuse.EIO
			},
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true,
		Logger:          logger,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
	}
	transport := opts.Transport
	if transport == "" {
		if transport, err = DefaultTransport(); err != nil {
			u.Close()
			return nil, nil, err
		}
	}
	raw := newImplicitDirs(&relabelReplies{&namespaceChanges{&ioModeOrder{RawFileSystem: fs.NewNodeFS(root, fsopts)}, u}, u.relabels})
	u.dirs = raw
	server, err := fuseloop.Mount(mountpoint, raw, fuseloop.Options{Transport: transport, Mount: fsopts.MountOptions, Ended: u.Close})
	if err != nil {
		u.Close()
		return nil, nil, err
	}
	u.transport, u.whyNotIOURing = server.Transport(), server.WhyNotIOURing()
	if u.transport != fuseloop.TransportGoFUSE {
		u.splicer.Store(server)
	}
	if privileged {
		raiseReadahead(mountpoint, logger)
	}
	settings := server.KernelSettings()
	u.passthrough.Store(passthroughPossible && settings.Flags64()&fuse.CAP_PASSTHROUGH != 0)
	close(u.mounted)
	return server, u, nil
}

// maxRequestData is the most data one READ or WRITE request carries:
// 1 MiB less two pages. A read is spliced from the layer file to the
// FUSE device through a pipe that must hold the reply's header, its data
// and a spare page, and pipes stop at /proc/sys/fs/pipe-max-size (1 MiB
// by default): with 1 MiB requests every large read missed the splice
// and was copied twice instead (docs/measurements.md).
const maxRequestData = 1<<20 - 2*4096

// readaheadKiB is the readahead the union asks for. The kernel offers
// FUSE mounts 128 KiB, so sequential reads of daemon-served files come as
// 128 KiB requests; requests as large as one may carry (maxRequestData)
// cut the per-request cost of reading a lower file.
const readaheadKiB = maxRequestData >> 10

// raiseReadahead sets the mount's readahead through its backing device
// info, which only root may write. Failing costs speed, not correctness.
func raiseReadahead(mountpoint string, logger *log.Logger) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return
	}
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(path, []byte(fmt.Sprintf("%d\n", readaheadKiB)), 0); err != nil {
		logger.Printf("readahead not raised: %v", err)
	}
}
