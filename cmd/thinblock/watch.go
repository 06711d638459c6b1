package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/unionmount/unionmount/thinblock"
)

// watchFlags are a server's space policy: what to run when the pool
// crosses its low-water mark (lvm's dmeventd autoextend), and what a
// write that finds no free block does (dm-thin's error_if_no_space and
// no_space_timeout).
type watchFlags struct {
	lowWaterCommand string
	noSpace         string
}

func (f *watchFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.lowWaterCommand, "low-water-command", "", "run CMD (with sh -c) once each time free data blocks fall to the low-water mark; THINBLOCK_POOL, THINBLOCK_BLOCK_SIZE, THINBLOCK_DATA_BLOCKS, THINBLOCK_FREE_BLOCKS, THINBLOCK_LOW_WATER_BLOCKS are in its environment (e.g. a command that runs thinblock pool resize)")
	fs.StringVar(&f.noSpace, "no-space", "error", "out of data space: error (writes that need a block fail with ENOSPC at once) or queue[:TIMEOUT] (they wait up to TIMEOUT, default 60s, 0 for ever, for the pool to grow or blocks to be freed)")
}

// noSpaceWait parses --no-space into thinblock.Options.NoSpaceWait.
func (f *watchFlags) noSpaceWait() (time.Duration, error) {
	switch {
	case f.noSpace == "error":
		return 0, nil
	case f.noSpace == "queue":
		return 60 * time.Second, nil
	case strings.HasPrefix(f.noSpace, "queue:"):
		d, err := time.ParseDuration(strings.TrimPrefix(f.noSpace, "queue:"))
		if err != nil || d < 0 {
			return 0, fmt.Errorf("%w: --no-space %q: the timeout must be a duration such as 60s", errUsage, f.noSpace)
		}
		if d == 0 {
			return -1, nil // for ever
		}
		return d, nil
	}
	return 0, fmt.Errorf("%w: --no-space %q: want error or queue[:TIMEOUT]", errUsage, f.noSpace)
}

// watchPool looks at the pool's free space every interval and runs the
// low-water command once when free blocks fall to the mark, again only
// after they rose above it (a grow, a delete). It returns a stop
// function.
func watchPool(p *thinblock.Pool, dir, command string, interval time.Duration, logf func(string, ...any)) func() {
	if command == "" {
		return func() {}
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		armed := true
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			st, err := p.Status()
			if err != nil {
				continue
			}
			low := st.FreeBlocks <= st.LowWater
			if low && armed {
				armed = false
				logf("free data blocks %d at or below the low-water mark %d: running %q", st.FreeBlocks, st.LowWater, command)
				go runLowWater(command, dir, st, logf)
			} else if !low {
				armed = true
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(stop); <-done }) }
}

// runLowWater runs the low-water command with the pool's figures in its
// environment and logs how it ended.
func runLowWater(command, dir string, st thinblock.Status, logf func(string, ...any)) {
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(),
		"THINBLOCK_POOL="+dir,
		"THINBLOCK_BLOCK_SIZE="+strconv.FormatUint(st.BlockSize, 10),
		"THINBLOCK_DATA_BLOCKS="+strconv.FormatUint(st.DataBlocks, 10),
		"THINBLOCK_FREE_BLOCKS="+strconv.FormatUint(st.FreeBlocks, 10),
		"THINBLOCK_LOW_WATER_BLOCKS="+strconv.FormatUint(st.LowWater, 10))
	out, err := cmd.CombinedOutput()
	if err != nil {
		logf("low-water command %q: %v: %s", command, err, strings.TrimSpace(string(out)))
		return
	}
	if len(out) > 0 {
		logf("low-water command %q: %s", command, strings.TrimSpace(string(out)))
	}
}
