package thinblock_test

import (
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/unionmount/unionmount/thinblock"
	"github.com/unionmount/unionmount/thinblock/blockdev"
)

// benchPool is a pool with volume 1 of size bytes, the first mapped bytes
// of it provisioned, on a metadata file and a null data device.
func benchPool(b *testing.B, size, mapped uint64) *thinblock.Pool {
	b.Helper()
	meta, err := blockdev.OpenFile(b.TempDir()+"/meta", true)
	if err != nil {
		b.Fatal(err)
	}
	p, err := thinblock.Create(meta, blockdev.NewNull(int64(2*size)), thinblock.CreateOptions{}, thinblock.Options{CommitInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.CreateVolume(1, size); err != nil {
		b.Fatal(err)
	}
	v, _ := p.Volume(1)
	block := make([]byte, thinblock.DefaultBlockSize)
	for off := uint64(0); off < mapped; off += thinblock.DefaultBlockSize {
		if _, err := v.WriteAt(block, int64(off)); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Commit(); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkSnapshot measures snapshot creation (and its commit) of a
// volume with 1 GiB and with 16 GiB mapped: O(1) means the two match.
func BenchmarkSnapshot(b *testing.B) {
	for _, gib := range []uint64{1, 16} {
		b.Run(fmt.Sprintf("mapped=%dGiB", gib), func(b *testing.B) {
			p := benchPool(b, gib<<30, gib<<30)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := uint64(100 + i)
				if err := p.Snapshot(id, 1); err != nil {
					b.Fatal(err)
				}
				if err := p.Commit(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := p.DeleteVolume(id); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkRandomWrite4KFresh writes 4 KiB at random offsets of a fresh
// volume (most writes provision a block).
func BenchmarkRandomWrite4KFresh(b *testing.B) {
	p := benchPool(b, 64<<30, 0)
	v, _ := p.Volume(1)
	buf := make([]byte, 4096)
	rng := rand.New(rand.NewSource(1))
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.WriteAt(buf, rng.Int63n(64<<30/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFirstWriteAfterSnapshot compares a 4 KiB write to a block
// shared with a snapshot (copy-on-write) with a plain overwrite.
func BenchmarkFirstWriteAfterSnapshot(b *testing.B) {
	const size = 1 << 30
	buf := make([]byte, 4096)
	for _, shared := range []bool{true, false} {
		name := "overwrite"
		if shared {
			name = "after-snapshot"
		}
		b.Run(name, func(b *testing.B) {
			p := benchPool(b, size, size)
			v, _ := p.Volume(1)
			if shared {
				if err := p.Snapshot(2, 1); err != nil {
					b.Fatal(err)
				}
			}
			blocks := int64(size / thinblock.DefaultBlockSize)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i > 0 && int64(i)%blocks == 0 && shared {
					b.StopTimer()
					p.DeleteVolume(2)
					p.Snapshot(2, 1)
					b.StartTimer()
				}
				if _, err := v.WriteAt(buf, (int64(i)%blocks)*thinblock.DefaultBlockSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConcurrentFirstWriteAfterSnapshot is the copy-on-write row of
// the harness in the library: 16 writers, each 4 KiB write the first to
// a 64 KiB block a snapshot shares, on file devices (the copy is a real
// copy_file_range).
func BenchmarkConcurrentFirstWriteAfterSnapshot(b *testing.B) {
	b.Run("copy_file_range", func(b *testing.B) {
		benchmarkConcurrentFirstWrite(b, func(f *blockdev.File) blockdev.Device { return f })
	})
	b.Run("through-memory", func(b *testing.B) {
		benchmarkConcurrentFirstWrite(b, func(f *blockdev.File) blockdev.Device { return noCopier{f} })
	})
}

// noCopier is a file data device without its in-kernel copy, so copies
// go through the pool's memory.
type noCopier struct{ *blockdev.File }

func (noCopier) CopyRange(dst, src, n int64) error { return blockdev.ErrNoCopyRange }

func benchmarkConcurrentFirstWrite(b *testing.B, wrap func(*blockdev.File) blockdev.Device) {
	const blocks = 4096
	dir := b.TempDir()
	meta, err := blockdev.OpenFile(dir+"/meta", true)
	if err != nil {
		b.Fatal(err)
	}
	file, err := blockdev.OpenFile(dir+"/data", true)
	if err != nil {
		b.Fatal(err)
	}
	data := wrap(file)
	bs := int64(thinblock.DefaultBlockSize)
	p, err := thinblock.Create(meta, data, thinblock.CreateOptions{DataSize: uint64(3 * blocks * bs)}, thinblock.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	if err := p.CreateVolume(1, uint64(blocks*bs)); err != nil {
		b.Fatal(err)
	}
	v, _ := p.Volume(1)
	fill := make([]byte, 1<<20)
	for off := int64(0); off < blocks*bs; off += int64(len(fill)) {
		if _, err := v.WriteAt(fill, off); err != nil {
			b.Fatal(err)
		}
	}
	snap := uint64(2)
	b.SetBytes(4096)
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		if snap > 2 {
			p.DeleteVolume(snap - 1)
		}
		if err := p.Snapshot(snap, 1); err != nil {
			b.Fatal(err)
		}
		snap++
		b.StartTimer()
		n := min(b.N-done, blocks)
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
					if _, err := v.WriteAt(buf, i*bs); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		done += n
	}
}
