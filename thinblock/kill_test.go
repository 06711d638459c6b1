package thinblock_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
	"github.com/unionmount/unionmount/thinblock/check"
)

const (
	killVolumeBlocks = 32
	killWriteSize    = 4096
	killEnv          = "THINBLOCK_KILL_CHILD"
)

// killWrite is the i-th write of the sequence a seed determines.
func killWrite(rng *rand.Rand) (off int64) {
	slots := killVolumeBlocks * testBlock / killWriteSize
	return int64(rng.Intn(slots)) * killWriteSize
}

func stamp(seq uint64) []byte {
	b := make([]byte, killWriteSize)
	for i := 0; i < killWriteSize; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], seq)
	}
	return b
}

func openFilePool(dir string, create bool) (*thinblock.Pool, error) {
	meta, err := blockdev.OpenFile(filepath.Join(dir, "meta"), create)
	if err != nil {
		return nil, err
	}
	data, err := blockdev.OpenFile(filepath.Join(dir, "data"), create)
	if err != nil {
		return nil, err
	}
	if create {
		return thinblock.Create(meta, data, thinblock.CreateOptions{DataSize: 4 * killVolumeBlocks * testBlock},
			thinblock.Options{CommitInterval: 50 * time.Millisecond})
	}
	return thinblock.Open(meta, data, thinblock.Options{CommitInterval: 50 * time.Millisecond})
}

// TestKillChildHelper is the child of TestSIGKILLKeepsFlushedWrites: it
// writes the seeded sequence forever, flushing now and then and saying so.
func TestKillChildHelper(t *testing.T) {
	arg := os.Getenv(killEnv)
	if arg == "" {
		t.Skip("runs only as the child of TestSIGKILLKeepsFlushedWrites")
	}
	dir, seedText, _ := strings.Cut(arg, ":")
	seed, _ := strconv.ParseInt(seedText, 10, 64)
	start, _ := strconv.ParseUint(os.Getenv(killEnv+"_START"), 10, 64)
	p, err := openFilePool(dir, false)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(3)
	}
	v, err := p.Volume(1)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(3)
	}
	// The parent times its kill from here, not from the process start,
	// which a loaded machine delays.
	fmt.Println("opened")
	rng := rand.New(rand.NewSource(seed))
	for seq := start + 1; ; seq++ {
		if _, err := v.WriteAt(stamp(seq), killWrite(rng)); err != nil {
			fmt.Println("error", err)
			os.Exit(3)
		}
		if rng.Intn(8) == 0 {
			if err := p.Commit(); err != nil {
				fmt.Println("error", err)
				os.Exit(3)
			}
			fmt.Println("flushed", seq)
		}
	}
}

// TestSIGKILLKeepsFlushedWrites kills a writing process at random moments
// and, after each restart, finds the pool clean and every write that was
// acknowledged as flushed still there.
func TestSIGKILLKeepsFlushedWrites(t *testing.T) {
	rounds := 50
	if os.Getenv("UNIONMOUNT_LONG") != "" {
		rounds = 500
	}
	dir := t.TempDir()
	p, err := openFilePool(dir, true)
	require.NoError(t, err)
	require.NoError(t, p.CreateVolume(1, killVolumeBlocks*testBlock))
	require.NoError(t, p.Close())

	// expect[slot] is the seq of the last flushed write to each slot.
	expect := map[int64]uint64{}
	writers := map[uint64]int64{} // seq -> slot, for every write issued
	var seq uint64
	ackedRounds := 0
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < rounds; round++ {
		seed := rng.Int63()
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChildHelper$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:%d", killEnv, dir, seed), fmt.Sprintf("%s_START=%d", killEnv, seq))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		acked := seq
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		killAfter := time.Duration(5+rng.Intn(60)) * time.Millisecond
		// Until the child has opened the pool, wait for it (up to 10 s).
		deadline := time.After(10 * time.Second)
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break wait
				}
				if strings.HasPrefix(l, "error") {
					t.Fatalf("child: %s", l)
				}
				if l == "opened" {
					deadline = time.After(killAfter)
				}
				if f, ok := strings.CutPrefix(l, "flushed "); ok {
					acked, _ = strconv.ParseUint(f, 10, 64)
				}
			case <-deadline:
				break wait
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for l := range lines {
			if f, ok := strings.CutPrefix(l, "flushed "); ok {
				acked, _ = strconv.ParseUint(f, 10, 64)
			}
		}
		cmd.Wait()
		if acked > seq {
			ackedRounds++
		}
		// Replay the child's sequence to know which slot each seq hit.
		wr := rand.New(rand.NewSource(seed))
		for s := seq + 1; s <= acked+4096; s++ {
			slot := killWrite(wr)
			wr.Intn(8)
			writers[s] = slot
			if s <= acked {
				expect[slot] = s
			}
		}
		verifyKilled(t, dir, expect, writers, round)
		// The next child starts after every seq this one could have used.
		seq = acked + 4096
	}
	require.Greater(t, ackedRounds, rounds/2, "most children lived long enough to flush")
	t.Logf("%d rounds, %d with flushed writes, %d slots verified", rounds, ackedRounds, len(expect))
}

func verifyKilled(t *testing.T, dir string, expect map[int64]uint64, writers map[uint64]int64, round int) {
	meta, err := blockdev.OpenFile(filepath.Join(dir, "meta"), false)
	require.NoError(t, err)
	r, err := check.Run(meta, nil)
	require.NoError(t, err)
	require.True(t, r.OK(), "round %d: check: %v", round, r.Errors)
	meta.Close()
	p, err := openFilePool(dir, false)
	require.NoError(t, err, "round %d: reopen", round)
	defer p.Close()
	v, err := p.Volume(1)
	require.NoError(t, err)
	buf := make([]byte, killWriteSize)
	for slot, want := range expect {
		_, err := v.ReadAt(buf, slot)
		require.NoError(t, err)
		got := binary.LittleEndian.Uint64(buf)
		for i := 0; i < killWriteSize; i += 8 {
			require.Equal(t, got, binary.LittleEndian.Uint64(buf[i:]), "round %d: slot %d is torn", round, slot)
		}
		require.GreaterOrEqual(t, got, want, "round %d: slot %d lost flushed write %d (holds %d)", round, slot, want, got)
		require.Equal(t, slot, writers[got], "round %d: slot %d holds write %d, which went elsewhere", round, slot, got)
	}
}
