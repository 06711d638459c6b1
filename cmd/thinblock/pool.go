package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
	"github.com/unionmount/unionmount/thinblock/txn"
)

// poolFlags name a pool's files.
type poolFlags struct {
	dir, meta, data string
}

func (f *poolFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "pool", "", "pool directory (holds metadata and data)")
	fs.StringVar(&f.meta, "meta", "", "metadata file (default DIR/metadata)")
	fs.StringVar(&f.data, "data", "", "data file or block device (default DIR/data)")
}

func (f *poolFlags) paths() (meta, data string, err error) {
	meta, data = f.meta, f.data
	if f.dir != "" {
		if meta == "" {
			meta = filepath.Join(f.dir, "metadata")
		}
		if data == "" {
			data = filepath.Join(f.dir, "data")
		}
	}
	if meta == "" {
		return "", "", fmt.Errorf("%w: name the pool with --pool DIR (or --meta and --data)", errUsage)
	}
	return meta, data, nil
}

// openedPool is a pool opened by this command, with its files locked
// against other thinblock processes.
type openedPool struct {
	*thinblock.Pool
	meta, data *blockdev.File
}

func (o *openedPool) Close() error {
	err := o.Pool.Close()
	o.meta.Close()
	o.data.Close()
	return err
}

// lock takes an exclusive (or shared) lock on the metadata file, so that
// two processes never open one pool for writing.
func lock(f *blockdev.File, exclusive bool) error {
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		if err == unix.EWOULDBLOCK {
			return &lockedError{path: f.Name(), holder: lockHolder(int(f.Fd()))}
		}
		return err
	}
	return nil
}

// openMetadata opens a pool's metadata file alone (for check and dump),
// locked shared or exclusive.
func openMetadata(path string, exclusive bool) (*blockdev.File, error) {
	meta, err := blockdev.OpenFile(path, false)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	if err := lock(meta, exclusive); err != nil {
		meta.Close()
		return nil, err
	}
	return meta, nil
}

func openFiles(f *poolFlags, create bool) (*blockdev.File, *blockdev.File, error) {
	metaPath, dataPath, err := f.paths()
	if err != nil {
		return nil, nil, err
	}
	if dataPath == "" {
		return nil, nil, fmt.Errorf("%w: name the data file with --data or --pool", errUsage)
	}
	if create && f.dir != "" {
		if err := os.MkdirAll(f.dir, 0o755); err != nil {
			return nil, nil, err
		}
	}
	meta, err := blockdev.OpenFile(metaPath, create)
	if err != nil {
		return nil, nil, fmt.Errorf("metadata: %w", err)
	}
	if err := lock(meta, true); err != nil {
		meta.Close()
		return nil, nil, err
	}
	dataCreate := create
	if st, err := os.Stat(dataPath); create && err == nil && st.Mode()&os.ModeDevice != 0 {
		dataCreate = false // a block device
	}
	data, err := blockdev.OpenFile(dataPath, dataCreate)
	if err != nil {
		meta.Close()
		if create {
			os.Remove(metaPath)
		}
		return nil, nil, fmt.Errorf("data: %w", err)
	}
	// Clients read blocks at random: keep readahead from dragging whole
	// neighbouring blocks in behind each read.
	unix.Fadvise(int(data.Fd()), 0, 0, unix.FADV_RANDOM)
	return meta, data, nil
}

// rollbackAdvice says what to do about a damaged newest superblock.
const rollbackAdvice = "restore the metadata from a backup, or accept the loss with `thinblock serve ... --accept-rollback` (the older transaction is then kept for good)"

// openPool opens an existing pool for changes.
func openPool(f *poolFlags) (*openedPool, error) {
	return openPoolWith(f, thinblock.Options{})
}

func openPoolWith(f *poolFlags, opts thinblock.Options) (*openedPool, error) {
	meta, data, err := openFiles(f, false)
	if err != nil {
		return nil, err
	}
	p, err := thinblock.Open(meta, data, opts)
	if err != nil {
		meta.Close()
		data.Close()
		if errors.Is(err, txn.ErrRollback) {
			return nil, fmt.Errorf("%w\n  %s", err, rollbackAdvice)
		}
		return nil, err
	}
	return &openedPool{Pool: p, meta: meta, data: data}, nil
}

// openServedPool opens a pool to serve it, after the checker has passed
// its metadata (as LVM runs thin_check before it activates a pool): a
// pool with damaged metadata is refused with what is wrong and what to
// run, rather than served with missing exports or wrong data. Warnings
// (a damaged superblock copy, nothing lost) go to logf.
func openServedPool(f *poolFlags, opts thinblock.Options, skipCheck bool, logf func(string, ...any)) (*openedPool, error) {
	meta, data, err := openFiles(f, false)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*openedPool, error) {
		meta.Close()
		data.Close()
		return nil, err
	}
	if !skipCheck {
		r, err := check.Run(meta, nil)
		if err != nil {
			return fail(fmt.Errorf("check metadata: %w", err))
		}
		for _, w := range r.Warnings() {
			logf("warning: %s", w)
		}
		where := "--pool " + f.dir
		if f.dir == "" {
			where = "--meta " + f.meta
		}
		if r.Recovery.Lost && !opts.AcceptRollback {
			return fail(fmt.Errorf("%w: %s\n  %s", txn.ErrRollback, r.Recovery, rollbackAdvice))
		}
		if r.ErrorCount > 0 {
			more := ""
			if r.ErrorCount > 1 {
				more = fmt.Sprintf(" (and %d more)", r.ErrorCount-1)
			}
			advice := "restore the metadata from a dump or backup"
			if r.ErrorCount == int(r.SpaceMapWrong) {
				advice = fmt.Sprintf("`thinblock check %s --repair` rebuilds the space map", where)
			}
			return fail(fmt.Errorf("%w: the pool's metadata fails the check, so it is not served: %s%s\n  run `thinblock check %s` for the full report; %s",
				errDamaged, r.Errors[0], more, where, advice))
		}
	}
	p, err := thinblock.Open(meta, data, opts)
	if err != nil {
		if errors.Is(err, txn.ErrRollback) {
			err = fmt.Errorf("%w\n  %s", err, rollbackAdvice)
		}
		return fail(err)
	}
	op := &openedPool{Pool: p, meta: meta, data: data}
	// What the checker cannot see (a tree it passed that still fails to
	// load) must not become a server with no exports.
	if _, err := p.Volumes(); err != nil {
		op.Close()
		return nil, fmt.Errorf("%w: list volumes: %v", errDamaged, err)
	}
	return op, nil
}

// errDamaged marks a pool refused for damaged metadata.
var errDamaged = errors.New("damaged metadata")

// parseSize reads sizes like 512, 64K, 10G, 1.5T (powers of 1024).
func parseSize(s string) (uint64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%w: size %q: want a number with an optional K, M, G or T suffix", syscall.EINVAL, s)
	}
	return uint64(v * float64(mult)), nil
}

func parseID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: volume id %q is not a number", syscall.EINVAL, s)
	}
	return id, nil
}

func humanSize(b uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	v := float64(b)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", b)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// isTerminal reports whether fd is a terminal (for progress output).
func isTerminal(fd uintptr) bool {
	_, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
	return err == nil
}

// progressPrinter prints a progress line at most a few times a second,
// only on a terminal.
func progressPrinter(what string) (func(done, total uint64), func()) {
	if !isTerminal(os.Stderr.Fd()) {
		return func(uint64, uint64) {}, func() {}
	}
	var last time.Time
	return func(done, total uint64) {
			if time.Since(last) < 200*time.Millisecond {
				return
			}
			last = time.Now()
			if total > 0 {
				fmt.Fprintf(os.Stderr, "\r%s: %d/%d (%d%%)", what, done, total, done*100/total)
			} else {
				fmt.Fprintf(os.Stderr, "\r%s: %d", what, done)
			}
		}, func() {
			fmt.Fprintf(os.Stderr, "\r\033[K")
		}
}
