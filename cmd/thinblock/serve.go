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
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
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
func (b *volumeBackend) WriteAt(p []byte, off int64) (int, error) { return b.v.Write(p, off) }
func (b *volumeBackend) Flush() error                             { return b.p.Commit() }
func (b *volumeBackend) Trim(off, n int64) error                  { return b.v.Discard(off, n) }
func (b *volumeBackend) WriteZeroes(off, n int64, unmap bool) error {
	return b.v.ZeroRange(off, n, unmap)
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
// read-only unless writable snapshots were asked for. It runs on every
// LIST, INFO and GO, so it reads the volumes' briefs, never their
// mappings.
func exports(p *thinblock.Pool, o exportOptions, logger *log.Logger) func() []nbd.Export {
	return func() []nbd.Export {
		vols, err := p.VolumesBrief()
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
				ReadOnly: o.readOnly || vi.ExportReadOnly(o.writableSnapshots),
				Hold:     holdVolume(p, vi.ID),
			})
		}
		return out
	}
}

// holdVolume claims volume id for the NBD client that chose it, so a
// delete is refused while the client is connected (thinblock/holds.go).
func holdVolume(p *thinblock.Pool, id uint64) func(net.Conn) (func(), error) {
	return func(nc net.Conn) (func(), error) {
		h, err := p.Hold(id, "NBD client "+describePeer(nc))
		if err != nil {
			return nil, err
		}
		return h.Release, nil
	}
}

// listen opens a unix socket (mode 0600) or a TCP address. The socket is
// made under a temporary name and renamed into place once it listens:
// bind makes the file, and a client that saw it before listen would be
// refused.
func listen(a listenAddr) (net.Listener, error) {
	if a.tcp != nil {
		return net.ListenTCP("tcp", a.tcp)
	}
	if st, err := os.Lstat(a.unix); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(a.unix) // a stale socket of an earlier server
	}
	tmp := fmt.Sprintf("%s.%d.tmp", a.unix, os.Getpid())
	os.Remove(tmp)
	old := syscall.Umask(0o077)
	l, err := net.Listen("unix", tmp)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // the name is a.unix's now
	if err := os.Rename(tmp, a.unix); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, err
	}
	return l, nil
}

func serveNBD(args []string, stderr io.Writer) error {
	tuneGC()
	fs := flagSet("serve nbd", stderr)
	var pf poolFlags
	pf.register(fs)
	addr := fs.String("listen", "", "unix://PATH (default: nbd.sock beside the metadata) or tcp://HOST:PORT (off loopback only with TLS required, or --insecure)")
	var eo exportOptions
	fs.BoolVar(&eo.readOnly, "read-only", false, "export every volume read-only")
	fs.BoolVar(&eo.writableSnapshots, "writable-snapshots", false, writableSnapshotsDoc)
	maxInFlight := fs.String("max-inflight", "256M", "bytes of requests in flight for the whole server (reads and writes not yet answered)")
	maxPerConn := fs.String("max-inflight-per-conn", "64M", "bytes of requests in flight per connection; over it the connection is not read until its replies drain")
	skipCheck := fs.Bool("skip-check", false, "do not check the metadata before serving (for pools too large to check at every start)")
	acceptRollback := fs.Bool("accept-rollback", false, "serve even if the newest superblock is damaged and its committed transaction would be lost (see thinblock check)")
	handshake := fs.Duration("handshake-timeout", nbd.DefaultHandshakeTimeout, "disconnect a client that has not chosen an export by then")
	var sf serviceFlags
	sf.register(fs)
	var wf watchFlags
	wf.register(fs)
	var tf tlsFlags
	tf.register(fs)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	meta, _, err := pf.paths()
	if err != nil {
		return err
	}
	noSpaceWait, err := wf.noSpaceWait()
	if err != nil {
		return err
	}
	svc, done, err := startService(sf, meta, stderr)
	if done {
		return err
	}
	limits, err := parseLimits(*maxInFlight, *maxPerConn, *handshake)
	if err != nil {
		return err
	}
	if eo.writableSnapshots {
		fmt.Fprintln(stderr, writableSnapshotsNote)
	}
	if *addr == "" {
		*addr = "unix://" + filepath.Join(filepath.Dir(meta), "nbd.sock")
	}
	la, err := parseListen(*addr)
	if err != nil {
		return err
	}
	tlsSet, err := tf.load()
	if err != nil {
		return err
	}
	if err := checkExposure(*addr, la, tlsSet, tf.insecure); err != nil {
		return err
	}
	logger := log.New(stderr, "thinblock serve: ", log.LstdFlags)
	p, err := openServedPool(&pf, thinblock.Options{AcceptRollback: *acceptRollback, Logf: logger.Printf, NoSpaceWait: noSpaceWait}, *skipCheck, logger.Printf)
	if err != nil {
		return err
	}
	if path := os.Getenv("THINBLOCK_CPUPROFILE"); path != "" {
		// For performance work: a CPU profile of the whole serve.
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	// Signals are caught from before the socket shows: a SIGTERM that
	// comes the moment a client sees it still stops the server cleanly.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	// The control socket exists before the NBD socket shows: whoever
	// sees that can run the volume commands at once.
	ctl, err := listenControl(&pf)
	if err != nil {
		p.Close()
		return err
	}
	l, err := listen(la)
	if err != nil {
		ctl.Close()
		p.Close()
		return err
	}
	srv := &nbd.Server{Exports: exports(p.Pool, eo, logger), Logger: logger,
		MaxInFlight: limits.total, MaxInFlightPerConn: limits.perConn, HandshakeTimeout: limits.handshake,
		TLS: tlsSet.config, RequireTLS: tlsSet.require}
	stopControl := ctl.serve(p.Pool, nbdHolders(srv), nil, logger)
	limitMemory(limits.total)
	stopReleaser := releaseWhenIdle(srv)
	defer stopReleaser()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	where := *addr
	if la.tcp != nil {
		where = "tcp://" + l.Addr().String() // the port chosen, for :0
	}
	fmt.Fprintf(stderr, "thinblock: serving %d volumes over NBD on %s (%s)\n", len(srv.Exports()), where, tlsSet.describe())
	stopWatch := watchPool(p.Pool, filepath.Dir(meta), wf.lowWaterCommand, 200*time.Millisecond, logger.Printf)
	defer stopWatch()
	defer svc.ready(logger.Printf)()
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
	stopControl()
	stopWatch()
	if la.unix != "" {
		os.Remove(la.unix)
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

// serveLimits bound a server's memory.
type serveLimits struct {
	total, perConn int64
	handshake      time.Duration
}

func parseLimits(total, perConn string, handshake time.Duration) (serveLimits, error) {
	t, err := parseSize(total)
	if err != nil {
		return serveLimits{}, fmt.Errorf("--max-inflight: %w", err)
	}
	c, err := parseSize(perConn)
	if err != nil {
		return serveLimits{}, fmt.Errorf("--max-inflight-per-conn: %w", err)
	}
	// A connection must be able to hold one request of the largest size.
	const largest = 32 << 20
	if c < largest || t < c {
		return serveLimits{}, fmt.Errorf("%w: --max-inflight-per-conn must be at least 32M (the largest request) and --max-inflight at least that", errUsage)
	}
	if handshake <= 0 {
		return serveLimits{}, fmt.Errorf("%w: --handshake-timeout must be positive", errUsage)
	}
	return serveLimits{total: int64(t), perConn: int64(c), handshake: handshake}, nil
}

// limitMemory gives the garbage collector a soft limit of the in-flight
// bound plus room for the rest of the server (metadata cache, pooled
// buffers, connections), unless GOMEMLIMIT says otherwise: with GOGC at
// 400 the heap could otherwise grow to five times a burst's live size
// before a collection.
func limitMemory(inflight int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(inflight + 256<<20)
	}
}

// releaseWhenIdle gives memory back to the system once the server has
// had nothing in flight for two seconds after a burst: the pooled
// buffers are dropped and the freed heap returned, so a server that
// served gigabytes does not keep them resident. It returns a stop
// function.
func releaseWhenIdle(srv *nbd.Server) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		idle := 0
		sample := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if srv.InFlight() != 0 {
				idle = 0
				continue
			}
			if idle++; idle < 2 {
				continue
			}
			metrics.Read(sample)
			if srv.ReleaseBuffers()+int64(sample[0].Value.Uint64()) > 16<<20 {
				debug.FreeOSMemory()
			}
		}
	}()
	return func() { close(stop); <-done }
}

// The deprecated --writable-snapshots: read-only is now a volume's own
// attribute, chosen at create and snapshot time.
const (
	writableSnapshotsDoc  = "deprecated: snapshots are writable unless made with --read-only; this only makes snapshots made before volume attributes writable"
	writableSnapshotsNote = "thinblock serve: --writable-snapshots is deprecated: a snapshot is writable unless made with `thinblock snapshot --read-only`; the flag now only affects snapshots made before volumes had attributes"
)
