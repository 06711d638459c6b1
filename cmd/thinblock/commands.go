package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
	"github.com/unionmount/unionmount/thinblock/control"
)

// printJSON prints v as indented JSON.
func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// flagSet makes a command's flag set; parse errors are usage errors.
func flagSet(name string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("thinblock "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, commandUsage(name))
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *pflag.FlagSet, args []string, positional int) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, exitError(0)
		}
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != positional {
		return nil, fmt.Errorf("%w: want %d arguments, got %d", errUsage, positional, fs.NArg())
	}
	return fs.Args(), nil
}

func cmdPoolCreate(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flagSet("pool create", stderr)
	var pf poolFlags
	pf.register(fs)
	size := fs.String("size", "", "data size (required unless the data is a block device)")
	blockSize := fs.String("block-size", "64K", "data block size, a power of two from 64K to 1G")
	lowWater := fs.Uint64("low-water", 0, "free blocks at which status warns (default 10%)")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	bs, err := parseSize(*blockSize)
	if err != nil {
		return err
	}
	co := thinblock.CreateOptions{BlockSize: bs, LowWater: *lowWater}
	if *size != "" {
		if co.DataSize, err = parseSize(*size); err != nil {
			return err
		}
	}
	if co.DataSize == 0 && pf.data == "" {
		return fmt.Errorf("%w: --size is required", errUsage)
	}
	meta, data, err := openFiles(&pf, true)
	if err != nil {
		return err
	}
	p, err := thinblock.Create(meta, data, co, thinblock.Options{})
	if err != nil {
		metaPath, dataPath, _ := pf.paths()
		meta.Close()
		data.Close()
		// Nothing half-made is left behind.
		os.Remove(metaPath)
		if st, serr := os.Stat(dataPath); serr == nil && st.Mode().IsRegular() {
			os.Remove(dataPath)
		}
		return err
	}
	op := &openedPool{Pool: p, meta: meta, data: data}
	st, _ := p.Status()
	fmt.Fprintf(stdout, "created pool: %d blocks of %s (%s)\n", st.DataBlocks, humanSize(st.BlockSize), humanSize(st.DataBlocks*st.BlockSize))
	return op.Close()
}

func cmdPoolStatus(args []string, stdin io.Reader, stdout, stderr io.Writer) (err error) {
	fs := flagSet("pool status", stderr)
	var pf poolFlags
	pf.register(fs)
	asJSON := fs.Bool("json", false, "print the status as one JSON object")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	p, err := openOps(&pf)
	if err != nil {
		return err
	}
	defer p.Close()
	st, err := p.Status()
	if err != nil {
		return err
	}
	// Like thin_check's, the status is for scripts too: a pool that
	// cannot take new writes is a failure they must not miss.
	var bad error
	switch {
	case st.Failed != "":
		bad = fmt.Errorf("the pool failed: %s", st.Failed)
	case st.OutOfSpace:
		bad = errors.New("the pool is out of data space: writes that need new blocks fail with ENOSPC (grow it with `thinblock pool resize`)")
	}
	if *asJSON {
		if err := printJSON(stdout, control.FromStatus(st)); err != nil {
			return err
		}
		return bad
	}
	defer func() {
		if err == nil {
			err = bad
		}
	}()
	used := st.DataBlocks - st.FreeBlocks
	fmt.Fprintf(stdout, "transaction:     %d\n", st.TransactionID)
	fmt.Fprintf(stdout, "block size:      %s\n", humanSize(st.BlockSize))
	fmt.Fprintf(stdout, "data:            %d/%d blocks used (%s of %s)\n", used, st.DataBlocks,
		humanSize(used*st.BlockSize), humanSize(st.DataBlocks*st.BlockSize))
	fmt.Fprintf(stdout, "low water mark:  %d free blocks\n", st.LowWater)
	fmt.Fprintf(stdout, "data available:  %s\n", humanSize(st.FreeBlocks*st.BlockSize))
	fmt.Fprintf(stdout, "metadata:        %d/%d blocks used (%s of %s; the file grows as needed)\n", st.MetadataUsed, st.MetadataBlocks,
		humanSize(st.MetadataUsed*4096), humanSize(st.MetadataBlocks*4096))
	fmt.Fprintf(stdout, "volumes:         %d\n", st.Volumes)
	state := "ok"
	switch {
	case st.Failed != "":
		state = "failed: " + st.Failed
	case st.OutOfSpace:
		state = "out of data space: writes needing new blocks fail with ENOSPC"
	case st.LowSpace:
		state = "low on data space (at or below the low water mark)"
	}
	fmt.Fprintf(stdout, "state:           %s\n", state)
	return nil
}

func cmdPoolResize(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flagSet("pool resize", stderr)
	var pf poolFlags
	pf.register(fs)
	size := fs.String("size", "", "new data size")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	p, err := openOps(&pf)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Resize(n); err != nil {
		return err
	}
	st, _ := p.Status()
	fmt.Fprintf(stdout, "resized pool: %d blocks (%s)\n", st.DataBlocks, humanSize(st.DataBlocks*st.BlockSize))
	return nil
}

func cmdPoolTrim(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flagSet("pool trim", stderr)
	var pf poolFlags
	pf.register(fs)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	p, err := openOps(&pf)
	if err != nil {
		return err
	}
	defer p.Close()
	n, err := p.Trim()
	if err != nil {
		return err
	}
	st, err := p.Status()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "trimmed %d unused data blocks (%s)\n", n, humanSize(n*st.BlockSize))
	return nil
}

// volumeCommand parses a command that takes nids volume ids (at least
// one when nids is negative), reaches the pool (see openOps) and runs fn
// on it.
func volumeCommand(name string, args []string, stderr io.Writer, nids int, extra func(*pflag.FlagSet),
	fn func(p poolOps, ids []uint64) error) error {
	var pf poolFlags
	ids, err := parseVolumeCommand(name, args, stderr, nids, &pf, extra)
	if err != nil {
		return err
	}
	p, err := openOps(&pf)
	if err != nil {
		return err
	}
	err = fn(p, ids)
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return err
}

// localVolumeCommand is volumeCommand for a command that reads the
// metadata itself, so needs the pool not to be served.
func localVolumeCommand(name string, args []string, stderr io.Writer, nids int,
	fn func(p *openedPool, ids []uint64) error) error {
	var pf poolFlags
	ids, err := parseVolumeCommand(name, args, stderr, nids, &pf, nil)
	if err != nil {
		return err
	}
	p, err := openPool(&pf)
	if err != nil {
		return err
	}
	err = fn(p, ids)
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return err
}

func parseVolumeCommand(name string, args []string, stderr io.Writer, nids int, pf *poolFlags, extra func(*pflag.FlagSet)) ([]uint64, error) {
	fs := flagSet(name, stderr)
	pf.register(fs)
	if extra != nil {
		extra(fs)
	}
	var rest []string
	var err error
	if nids < 0 {
		if rest, err = parseAtLeastOne(fs, args); err != nil {
			return nil, err
		}
	} else if rest, err = parse(fs, args, nids); err != nil {
		return nil, err
	}
	ids := make([]uint64, len(rest))
	for i, a := range rest {
		if ids[i], err = parseID(a); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// parseAtLeastOne parses flags and one or more arguments.
func parseAtLeastOne(fs *pflag.FlagSet, args []string) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, exitError(0)
		}
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() == 0 {
		return nil, fmt.Errorf("%w: want at least one volume id", errUsage)
	}
	return fs.Args(), nil
}

// attrFlags are a new volume's attributes.
type attrFlags struct{ a thinblock.Attrs }

func (f *attrFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.a.Name, "name", "", "a name for the volume, shown by ls (no spaces)")
	fs.BoolVar(&f.a.ReadOnly, "read-only", false, "serve the volume read-only (an image layer); the default is writable, as in dm-thin")
}

func cmdCreate(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var size *string
	var af attrFlags
	return volumeCommand("create", args, stderr, 1, func(fs *pflag.FlagSet) {
		size = fs.String("size", "", "virtual size")
		af.register(fs)
	}, func(p poolOps, ids []uint64) error {
		n, err := parseSize(*size)
		if err != nil {
			return err
		}
		if err := thinblock.CheckNewVolumeID(ids[0]); err != nil {
			return err
		}
		if err := thinblock.CheckName(af.a.Name); err != nil {
			return err
		}
		return p.CreateVolumeWith(ids[0], n, af.a)
	})
}

func cmdSnapshot(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var af attrFlags
	return volumeCommand("snapshot", args, stderr, 2, af.register, func(p poolOps, ids []uint64) error {
		if err := thinblock.CheckNewVolumeID(ids[0]); err != nil {
			return err
		}
		if err := thinblock.CheckName(af.a.Name); err != nil {
			return err
		}
		return p.SnapshotWith(ids[0], ids[1], af.a)
	})
}

func cmdSet(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var name *string
	var ro, rw *bool
	return volumeCommand("set", args, stderr, 1, func(fs *pflag.FlagSet) {
		name = fs.String("name", "", "rename the volume")
		ro = fs.Bool("read-only", false, "serve it read-only from now on (e.g. an image layer once written)")
		rw = fs.Bool("writable", false, "serve it writable from now on")
	}, func(p poolOps, ids []uint64) error {
		var c thinblock.AttrChange
		switch {
		case *ro && *rw:
			return fmt.Errorf("%w: --read-only or --writable, not both", errUsage)
		case *ro || *rw:
			c.ReadOnly = ro
		}
		if *name != "" {
			c.Name = name
		}
		if c.Name == nil && c.ReadOnly == nil {
			return fmt.Errorf("%w: set what? --name, --read-only or --writable", errUsage)
		}
		return p.SetAttrs(ids[0], c)
	})
}

func cmdDelete(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return volumeCommand("delete", args, stderr, -1, nil, func(p poolOps, ids []uint64) error {
		return p.DeleteVolumes(ids)
	})
}

func cmdLs(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var asJSON *bool
	return volumeCommand("ls", args, stderr, 0, func(fs *pflag.FlagSet) {
		asJSON = fs.Bool("json", false, "print a JSON array, one object per volume")
	}, func(p poolOps, _ []uint64) error {
		vols, err := p.Volumes()
		if err != nil {
			return err
		}
		if *asJSON {
			out := make([]control.Volume, len(vols))
			for i, v := range vols {
				out[i] = control.FromVolumeInfo(v)
			}
			return printJSON(stdout, out)
		}
		st, err := p.Status()
		if err != nil {
			return err
		}
		bs := st.BlockSize
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "DEV\tSIZE\tMAPPED\tEXCLUSIVE\tSHARED\tRO\tORIGIN\t NAME")
		for _, v := range vols {
			ro, origin := "-", "-"
			if v.ExportReadOnly(false) {
				ro = "ro"
			}
			if v.HasOrigin {
				origin = strconv.FormatUint(v.Origin, 10)
			} else if v.Snapshot {
				origin = "?" // a snapshot made before origins were kept
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t %s\n", v.ID, humanSize(v.Size), humanSize(v.Mapped*bs),
				humanSize(v.Exclusive*bs), humanSize(v.Shared*bs), ro, origin, v.Name)
		}
		return tw.Flush()
	})
}

func cmdCheck(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flagSet("check", stderr)
	var pf poolFlags
	pf.register(fs)
	repair := fs.Bool("repair", false, "rebuild the data space map from the mappings")
	trust := fs.Bool("trust-mappings", false, "with --repair: rebuild even where a mapping points at a data block the space map did not count for it (you vouch for the mappings)")
	quiet := fs.BoolP("quiet", "q", false, "print nothing, only set the exit status")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	metaPath, _, err := pf.paths()
	if err != nil {
		return err
	}
	meta, err := openMetadata(metaPath, *repair)
	if err != nil {
		return err
	}
	defer meta.Close()
	progress, done := progressPrinter("checking metadata")
	r, err := check.Run(meta, progress)
	done()
	if err != nil {
		return err
	}
	if !*quiet {
		printReport(stdout, r)
	}
	if r.OK() {
		return nil
	}
	if !*repair {
		return exitError(1)
	}
	if r.Recovery.Lost || r.ErrorCount != int(r.SpaceMapWrong) {
		fmt.Fprintln(stderr, "thinblock check: the problems are not all in the space map; --repair only rebuilds the space map")
		return exitError(1)
	}
	_, dataPath, _ := pf.paths()
	data, err := blockdev.OpenFile(dataPath, false)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer data.Close()
	rep, err := thinblock.RepairSpaceMap(meta, data, thinblock.Options{}, *trust)
	if errors.Is(err, thinblock.ErrUnverified) {
		fmt.Fprintf(stdout, "NOT repaired: %d mappings point at data blocks the space map did not count for them:\n", len(rep.Unverified))
		printUnverified(stdout, rep)
		fmt.Fprintln(stdout, "Either the space map lost counts or these mappings were changed and read another block's data;")
		fmt.Fprintln(stdout, "the repair cannot tell which, so nothing was changed. Restore the metadata from a dump or backup,")
		fmt.Fprintln(stdout, "or, if you know the mappings are right, rerun with --repair --trust-mappings.")
		return exitError(1)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "repaired: data space map rebuilt (%d blocks in use)\n", rep.InUse)
	if len(rep.Unverified) > 0 {
		fmt.Fprintf(stdout, "trusted (--trust-mappings) %d mappings the space map did not vouch for:\n", len(rep.Unverified))
		printUnverified(stdout, rep)
	}
	if len(rep.Freed) > 0 {
		fmt.Fprintf(stdout, "freed %d data blocks no mapping refers to: %s\n", len(rep.Freed), blockList(rep.Freed))
	}
	return nil
}

// printUnverified lists the mappings a repair could not vouch for, and
// the blocks that lost their last reference (a redirected mapping's old
// data is in one of them).
func printUnverified(w io.Writer, rep *thinblock.RepairReport) {
	for i, u := range rep.Unverified {
		if i == 20 {
			fmt.Fprintf(w, "  (and %d more)\n", len(rep.Unverified)-i)
			break
		}
		fmt.Fprintf(w, "  %s\n", u)
	}
	if len(rep.Freed) > 0 {
		fmt.Fprintf(w, "data blocks the space map counts but no mapping refers to (a changed mapping's old data may be there): %s\n", blockList(rep.Freed))
	}
}

func blockList(bs []uint64) string {
	var parts []string
	for i, b := range bs {
		if i == 20 {
			parts = append(parts, fmt.Sprintf("and %d more", len(bs)-i))
			break
		}
		parts = append(parts, strconv.FormatUint(b, 10))
	}
	return strings.Join(parts, ", ")
}

func printReport(w io.Writer, r *check.Report) {
	for i, s := range r.Slots {
		fmt.Fprintf(w, "superblock slot %d: %s\n", i, s)
	}
	fmt.Fprintf(w, "transaction %d, %d volumes, %d mappings, %d data blocks in use, %d metadata blocks in use\n",
		r.Superblock.TxnID, r.Volumes, r.Mappings, r.DataUsed, r.MetadataUsed)
	for _, warn := range r.Warnings() {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	if r.OK() {
		fmt.Fprintln(w, "metadata is consistent")
		return
	}
	if r.Recovery.Lost {
		fmt.Fprintf(w, "ROLLBACK: %s\n  %s\n", r.Recovery, rollbackAdvice)
	}
	if r.ErrorCount == 0 {
		return
	}
	fmt.Fprintf(w, "%d problems:\n  %s\n", r.ErrorCount, strings.Join(r.Errors, "\n  "))
	if r.ErrorCount > len(r.Errors) {
		fmt.Fprintf(w, "  (and %d more)\n", r.ErrorCount-len(r.Errors))
	}
}

func cmdDelta(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return localVolumeCommand("delta", args, stderr, 2, func(p *openedPool, ids []uint64) error {
		ranges, err := p.Delta(ids[0], ids[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "<superblock data_block_size=\"%d\">\n  <diff left=\"%d\" right=\"%d\">\n", p.BlockSize()/512, ids[0], ids[1])
		for _, r := range ranges {
			fmt.Fprintf(stdout, "    <%s begin=\"%d\" length=\"%d\"/>\n", r.Kind, r.Begin, r.Length)
		}
		fmt.Fprintf(stdout, "  </diff>\n</superblock>\n")
		return nil
	})
}

func cmdDump(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flagSet("dump", stderr)
	var pf poolFlags
	pf.register(fs)
	out := fs.StringP("output", "o", "", "write to FILE instead of stdout")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	metaPath, dataPath, err := pf.paths()
	if err != nil {
		return err
	}
	meta, err := openMetadata(metaPath, true)
	if err != nil {
		return err
	}
	defer meta.Close()
	// Dumping reads only metadata: without a data file, stand in one
	// that holds nothing.
	var data blockdev.Device = blockdev.NewNull(1 << 62)
	if dataPath != "" {
		if f, err := blockdev.OpenFile(dataPath, false); err == nil {
			defer f.Close()
			data = f
		}
	}
	p, err := thinblock.Open(meta, data, thinblock.Options{})
	if err != nil {
		return err
	}
	defer p.Close()
	w := stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	return p.Dump(w)
}

func cmdRestore(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flagSet("restore", stderr)
	var pf poolFlags
	pf.register(fs)
	in := fs.StringP("input", "i", "-", "thin_dump XML to restore (default: standard input)")
	dataSize := fs.String("data-size", "", "data size (default: nr_data_blocks of the dump)")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	read := func() (io.ReadCloser, error) {
		if *in == "-" {
			return io.NopCloser(stdin), nil
		}
		return os.Open(*in)
	}
	r, err := read()
	if err != nil {
		return err
	}
	var src io.Reader = r
	var buffered []byte
	if *in == "-" {
		// The header and the body are read in two passes.
		if buffered, err = io.ReadAll(r); err != nil {
			return err
		}
		src = strings.NewReader(string(buffered))
	}
	h, err := thinblock.ReadDumpHeader(src)
	r.Close()
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	co := thinblock.CreateOptions{BlockSize: h.BlockSize, DataSize: h.DataBlocks * h.BlockSize}
	if *dataSize != "" {
		if co.DataSize, err = parseSize(*dataSize); err != nil {
			return err
		}
	}
	meta, data, err := openFiles(&pf, true)
	if err != nil {
		return err
	}
	metaPath, dataPath, _ := pf.paths()
	cleanup := func() {
		meta.Close()
		data.Close()
		os.Remove(metaPath)
		if st, err := os.Stat(dataPath); err == nil && st.Mode().IsRegular() {
			os.Remove(dataPath)
		}
	}
	p, err := thinblock.Create(meta, data, co, thinblock.Options{})
	if err != nil {
		cleanup()
		return err
	}
	if *in == "-" {
		src = strings.NewReader(string(buffered))
	} else if r, err = read(); err != nil {
		cleanup()
		return err
	} else {
		defer r.Close()
		src = r
	}
	progress, done := progressPrinter("restoring devices")
	err = p.Restore(src, func(n int) { progress(uint64(n), 0) })
	done()
	if err != nil {
		p.Close()
		cleanup()
		return err
	}
	op := &openedPool{Pool: p, meta: meta, data: data}
	st, _ := p.Status()
	fmt.Fprintf(stdout, "restored %d volumes\n", st.Volumes)
	return op.Close()
}
