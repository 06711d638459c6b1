package main

import (
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/fuseexport"
)

// serveFUSE serves each volume as a file in MOUNTDIR until SIGTERM or an
// unmount, then commits (see stopFUSE for a mount kept busy).
func serveFUSE(args []string, stderr io.Writer) error {
	tuneGC()
	fs := flagSet("serve fuse", stderr)
	var pf poolFlags
	pf.register(fs)
	var o fuseexport.Options
	fs.BoolVar(&o.ReadOnly, "read-only", false, "export every volume read-only")
	fs.BoolVar(&o.WritableSnapshots, "writable-snapshots", false, writableSnapshotsDoc)
	fs.BoolVarP(&o.Debug, "debug", "d", false, "trace FUSE operations")
	stopTimeout := fs.Duration("stop-timeout", 30*time.Second, "after SIGTERM, how long to wait for loop devices (or processes) to let go of the volume files before detaching what can be detached and exiting")
	skipCheck := fs.Bool("skip-check", false, "do not check the metadata before serving (for pools too large to check at every start)")
	acceptRollback := fs.Bool("accept-rollback", false, "serve even if the newest superblock is damaged and its committed transaction would be lost (see thinblock check)")
	var sf serviceFlags
	sf.register(fs)
	var wf watchFlags
	wf.register(fs)
	rest, err := parse(fs, args, 1)
	if err != nil {
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
	if st, err := os.Stat(rest[0]); err != nil || !st.IsDir() {
		return fmt.Errorf("%w: mount point %s is not a directory", errUsage, rest[0])
	}
	if o.WritableSnapshots {
		fmt.Fprintln(stderr, writableSnapshotsNote)
	}
	o.Logger = log.New(stderr, "thinblock serve: ", log.LstdFlags)
	p, err := openServedPool(&pf, thinblock.Options{AcceptRollback: *acceptRollback, Logf: o.Logger.Printf, NoSpaceWait: noSpaceWait}, *skipCheck, o.Logger.Printf)
	if err != nil {
		return err
	}
	// Caught from before the mount is visible (see unionmount's serve).
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	// The control socket exists before the mount shows: whoever sees
	// the volume files can run the volume commands at once.
	ctl, err := listenControl(&pf)
	if err != nil {
		p.Close()
		return err
	}
	srv, err := fuseexport.Mount(rest[0], p.Pool, o)
	if err != nil {
		ctl.Close()
		p.Close()
		return err
	}
	stopControl := ctl.serve(p.Pool, fuseHolders(srv, rest[0]), func() {
		if err := srv.Refresh(); err != nil {
			o.Logger.Printf("refresh the volume files: %v", err)
		}
	}, o.Logger)
	defer stopControl()
	fmt.Fprintf(stderr, "thinblock: serving volumes as files in %s\n", rest[0])
	stopWatch := watchPool(p.Pool, filepath.Dir(meta), wf.lowWaterCommand, 200*time.Millisecond, o.Logger.Printf)
	defer stopWatch()
	defer svc.ready(o.Logger.Printf)()
	served := make(chan struct{})
	go func() { srv.Wait(); close(served) }()
	// The control socket goes first: no request reaches a closing pool.
	select {
	case <-served: // unmounted from outside
		stopControl()
		stopWatch()
		return p.Close()
	case sig := <-signals:
		stopControl()
		stopWatch()
		return stopFUSE(fuseStop{srv: srv, mnt: rest[0], pool: p, signals: signals, served: served,
			timeout: *stopTimeout, logf: o.Logger.Printf}, sig)
	}
}

// fuseHolders names who has volume id's file open: the loop devices
// over it, or else the count of opens.
func fuseHolders(e *fuseexport.Export, mnt string) func(id uint64) []string {
	return func(id uint64) []string {
		n := e.Opens(id)
		if n == 0 {
			return nil
		}
		file := filepath.Join(mnt, fmt.Sprint(id))
		var out []string
		for _, h := range loopHolders(mnt) {
			if h.file == file {
				out = append(out, h.dev+" (a loop device) over "+file)
			}
		}
		if len(out) == 0 {
			out = append(out, fmt.Sprintf("open %d times through the FUSE export as %s (fuser %s shows who)", n, file, file))
		}
		return out
	}
}

// fuseStop is what stopping a FUSE server needs.
type fuseStop struct {
	srv     interface{ Unmount() error }
	mnt     string
	pool    *openedPool
	signals <-chan os.Signal
	served  <-chan struct{}
	timeout time.Duration
	logf    func(string, ...any)
}

// stopFUSE unmounts after a signal. A mount kept busy (a loop device
// over a volume file, typically) is waited for, saying which device
// holds which volume, until the holder lets go, the timeout passes or a
// second signal comes; then the loop devices are detached (LOOP_CLR_FD),
// and if the mount is still busy it is unmounted lazily, its FUSE
// connection aborted, and the pool closed, with what was left said. The
// pool never stays locked behind a silent server.
func stopFUSE(s fuseStop, sig os.Signal) error {
	unmounted := func() error {
		<-s.served
		return s.pool.Close()
	}
	if s.srv.Unmount() == nil {
		return unmounted()
	}
	// The connection's device number, for an abort at the end (the
	// mount cannot be asked once it is detached).
	var st unix.Stat_t
	statErr := unix.Stat(s.mnt, &st)
	s.logf("%v: %s is busy: %s; waiting up to %v for that to end (losetup -d DEVICE; a second signal stops waiting)",
		sig, s.mnt, describeHolders(loopHolders(s.mnt)), s.timeout)
	// What was acknowledged is made durable while we wait.
	if err := s.pool.Commit(); err != nil {
		s.logf("commit: %v", err)
	}
	deadline := time.NewTimer(s.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-tick.C:
			if s.srv.Unmount() == nil {
				s.logf("%s is no longer busy: unmounted", s.mnt)
				return unmounted()
			}
		case <-s.served:
			return s.pool.Close()
		case <-deadline.C:
			s.logf("still busy after %v", s.timeout)
			break wait
		case sig := <-s.signals:
			s.logf("%v: not waiting any longer", sig)
			break wait
		}
	}
	for _, h := range loopHolders(s.mnt) {
		switch gone, err := detachLoop(h.dev); {
		case err != nil:
			s.logf("detach %s (volume %s): %v", h.dev, filepath.Base(h.file), err)
		case gone:
			s.logf("detached %s (volume %s)", h.dev, filepath.Base(h.file))
		default:
			s.logf("%s (volume %s) is still open (a mounted filesystem?): marked to detach at its last close", h.dev, filepath.Base(h.file))
		}
	}
	if unmountWhenIdle(s.srv.Unmount, 10) == nil {
		return unmounted()
	}
	left := describeHolders(loopHolders(s.mnt))
	if err := unix.Unmount(s.mnt, unix.MNT_DETACH); err != nil {
		s.logf("lazy unmount %s: %v", s.mnt, err)
	}
	// Abort the connection so nothing more is acknowledged once the pool
	// is closed; exiting would end it too, a moment later.
	if statErr != nil {
		s.logf("abort the FUSE connection: %v", statErr)
	} else if err := abortFUSE(st.Dev); err != nil {
		s.logf("abort the FUSE connection: %v", err)
	} else {
		select {
		case <-s.served:
		case <-time.After(5 * time.Second):
			s.logf("the FUSE server did not stop; closing the pool anyway")
		}
	}
	cerr := s.pool.Close()
	err := fmt.Errorf("stopped with %s still busy: %s; left attached, unmounted lazily and disconnected, so their I/O fails from now on", s.mnt, left)
	if cerr != nil {
		err = fmt.Errorf("%w (and closing the pool: %v)", err, cerr)
	}
	return err
}

// unmountWhenIdle retries an unmount refused as busy, tries times, 100
// ms apart: a loop device just detached lets go of its file a moment
// later.
func unmountWhenIdle(unmount func() error, tries int) error {
	var err error
	for i := 0; i < tries; i++ {
		if err = unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}
