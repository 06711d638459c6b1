package main

import (
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/fuseexport"
)

// serveFUSE serves each volume as a file in MOUNTDIR until SIGTERM or an
// unmount, then commits.
func serveFUSE(args []string, stderr io.Writer) error {
	tuneGC()
	fs := flagSet("serve fuse", stderr)
	var pf poolFlags
	pf.register(fs)
	var o fuseexport.Options
	fs.BoolVar(&o.ReadOnly, "read-only", false, "export every volume read-only")
	fs.BoolVar(&o.WritableSnapshots, "writable-snapshots", false, "export snapshots writable too")
	fs.BoolVarP(&o.Debug, "debug", "d", false, "trace FUSE operations")
	skipCheck := fs.Bool("skip-check", false, "do not check the metadata before serving (for pools too large to check at every start)")
	acceptRollback := fs.Bool("accept-rollback", false, "serve even if the newest superblock is damaged and its committed transaction would be lost (see thinblock check)")
	rest, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	if st, err := os.Stat(rest[0]); err != nil || !st.IsDir() {
		return fmt.Errorf("%w: mount point %s is not a directory", errUsage, rest[0])
	}
	o.Logger = log.New(stderr, "thinblock serve: ", log.LstdFlags)
	p, err := openServedPool(&pf, thinblock.Options{AcceptRollback: *acceptRollback}, *skipCheck, o.Logger.Printf)
	if err != nil {
		return err
	}
	// Caught from before the mount is visible (see unionmount's serve).
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	srv, err := fuseexport.Mount(rest[0], p.Pool, o)
	if err != nil {
		p.Close()
		return err
	}
	fmt.Fprintf(stderr, "thinblock: serving volumes as files in %s\n", rest[0])
	go func() {
		for sig := range signals {
			if err := unmountWhenIdle(srv.Unmount); err != nil {
				o.Logger.Printf("%v: unmount %s: %v (still serving; signal again to retry)", sig, rest[0], err)
			}
		}
	}()
	srv.Wait()
	return p.Close()
}

// unmountWhenIdle retries an unmount refused as busy for a few seconds:
// a loop device just detached lets go of its file a moment later.
func unmountWhenIdle(unmount func() error) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}
