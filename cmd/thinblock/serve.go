package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/nbd"
)

// volumeBackend serves one thin volume over NBD.
type volumeBackend struct {
	p    *thinblock.Pool
	v    *thinblock.Volume
	size uint64
}

func (b *volumeBackend) Size() uint64                             { return b.size }
func (b *volumeBackend) ReadAt(p []byte, off int64) (int, error)  { return b.v.ReadAt(p, off) }
func (b *volumeBackend) WriteAt(p []byte, off int64) (int, error) { return b.v.WriteAt(p, off) }
func (b *volumeBackend) Flush() error                             { return b.p.Commit() }
func (b *volumeBackend) Trim(off, n int64) error                  { return b.v.Discard(off, n) }
func (b *volumeBackend) WriteZeroes(off, n int64, unmap bool) error {
	return b.v.WriteZeroes(off, n, unmap)
}

func (b *volumeBackend) Extents(off, n int64) ([]nbd.Extent, error) {
	exts, err := b.v.Extents(off, n)
	if err != nil {
		return nil, err
	}
	out := make([]nbd.Extent, len(exts))
	for i, e := range exts {
		out[i] = nbd.Extent{Length: e.Length, Hole: e.Hole}
	}
	return out, nil
}

// exportOptions say which exports are writable.
type exportOptions struct {
	readOnly          bool
	writableSnapshots bool
}

// exports lists one export per volume, named by its id; snapshots are
// read-only unless writable snapshots were asked for.
func exports(p *thinblock.Pool, o exportOptions, logger *log.Logger) func() []nbd.Export {
	return func() []nbd.Export {
		vols, err := p.Volumes()
		if err != nil {
			logger.Printf("list volumes: %v", err)
			return nil
		}
		out := make([]nbd.Export, 0, len(vols))
		for _, vi := range vols {
			v, err := p.Volume(vi.ID)
			if err != nil {
				continue
			}
			desc := "thin volume"
			if vi.Snapshot {
				desc = "thin snapshot"
			}
			out = append(out, nbd.Export{
				Name: strconv.FormatUint(vi.ID, 10), Description: desc,
				Backend:  &volumeBackend{p: p, v: v, size: vi.Size},
				ReadOnly: o.readOnly || (vi.Snapshot && !o.writableSnapshots),
			})
		}
		return out
	}
}

// listen opens unix://PATH (mode 0600) or tcp://HOST:PORT.
func listen(addr string) (net.Listener, error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			os.Remove(path) // a stale socket of an earlier server
		}
		old := syscall.Umask(0o077)
		l, err := net.Listen("unix", path)
		syscall.Umask(old)
		return l, err
	case strings.HasPrefix(addr, "tcp://"):
		return net.Listen("tcp", strings.TrimPrefix(addr, "tcp://"))
	}
	return nil, fmt.Errorf("%w: --listen %q: want unix://PATH or tcp://HOST:PORT", errUsage, addr)
}

func cmdServe(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: serve nbd|fuse", errUsage)
	}
	switch args[0] {
	case "nbd":
		return serveNBD(args[1:], stderr)
	case "fuse":
		return serveFUSE(args[1:], stderr)
	}
	return fmt.Errorf("%w: serve %q: want nbd or fuse", errUsage, args[0])
}

func serveNBD(args []string, stderr io.Writer) error {
	tuneGC()
	fs := flagSet("serve nbd", stderr)
	var pf poolFlags
	pf.register(fs)
	addr := fs.String("listen", "", "unix://PATH (default: nbd.sock beside the metadata) or tcp://HOST:PORT")
	var eo exportOptions
	fs.BoolVar(&eo.readOnly, "read-only", false, "export every volume read-only")
	fs.BoolVar(&eo.writableSnapshots, "writable-snapshots", false, "export snapshots writable too")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *addr == "" {
		meta, _, err := pf.paths()
		if err != nil {
			return err
		}
		*addr = "unix://" + filepath.Join(filepath.Dir(meta), "nbd.sock")
	}
	p, err := openPool(&pf)
	if err != nil {
		return err
	}
	logger := log.New(stderr, "thinblock serve: ", log.LstdFlags)
	if path := os.Getenv("THINBLOCK_CPUPROFILE"); path != "" {
		// For performance work: a CPU profile of the whole serve.
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	l, err := listen(*addr)
	if err != nil {
		p.Close()
		return err
	}
	srv := &nbd.Server{Exports: exports(p.Pool, eo, logger), Logger: logger}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	fmt.Fprintf(stderr, "thinblock: serving %d volumes over NBD on %s\n", len(srv.Exports()), *addr)
	select {
	case sig := <-signals:
		logger.Printf("%v: finishing in-flight requests", sig)
	case err := <-served:
		logger.Printf("listener: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		logger.Printf("shutdown: %v", err)
	}
	if strings.HasPrefix(*addr, "unix://") {
		os.Remove(strings.TrimPrefix(*addr, "unix://"))
	}
	read, written := srv.Stats()
	fmt.Fprintf(stderr, "thinblock: stopped; read %d bytes, wrote %d bytes for clients\n", read, written)
	return p.Close()
}

// tuneGC lets a server's heap grow to five times its live size between
// collections (unless GOGC says otherwise): its live heap is small (the
// bounded metadata cache) while every request makes short-lived garbage,
// so the default spent more time collecting than serving first writes
// (measured: 4 KiB first writes at iodepth 16 ran twice as fast).
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}
