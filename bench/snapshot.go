package bench

import (
	"fmt"
	"os"
	"path/filepath"
)

// SnapshotWorkloads time snapshot creation of a volume with the given
// amounts mapped: O(1) designs take the same time for both.
func SnapshotWorkloads(cfg *Config) []Workload {
	var out []Workload
	for _, size := range cfg.sizes().snapSizes {
		size := size
		out = append(out, Workload{Name: "snapshot-" + size + "-mapped", Family: Block,
			NotFor: func(t Target, _ *Instance) string {
				if t.Name() != "thinblock" && t.Name() != "qemu-nbd-qcow2" {
					return "no snapshots"
				}
				return ""
			},
			Run: func(e *Env, inst *Instance) (Result, error) {
				n, err := parseSize(size)
				if err != nil {
					return Result{}, err
				}
				dir, err := os.MkdirTemp(e.cfg.Dir, "snap-")
				if err != nil {
					return Result{}, err
				}
				defer os.RemoveAll(dir)
				if inst.thin {
					return thinSnapshotTime(e, dir, n)
				}
				return qcow2SnapshotTime(dir, n)
			}})
	}
	return out
}

// thinSnapshotTime restores a pool whose volume 1 maps n bytes (metadata
// only, from a thin_dump XML), then times `thinblock snapshot`.
func thinSnapshotTime(e *Env, dir string, n int64) (Result, error) {
	const bs = 64 << 10
	blocks := n / bs
	xml := filepath.Join(dir, "pool.xml")
	doc := fmt.Sprintf(`<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="%d">
  <device dev_id="1" mapped_blocks="%d" transaction="0" creation_time="0" snap_time="0" thinblock_size="%d">
    <range_mapping origin_begin="0" data_begin="0" length="%d" time="0"/>
  </device>
</superblock>
`, 2*blocks, blocks, n, blocks)
	if err := os.WriteFile(xml, []byte(doc), 0o644); err != nil {
		return Result{}, err
	}
	pool := filepath.Join(dir, "pool")
	if _, err := runCmd(e.cfg.ThinblockBin, "restore", "--pool", pool, "-i", xml); err != nil {
		return Result{}, err
	}
	return timed(func() error {
		_, err := runCmd(e.cfg.ThinblockBin, "snapshot", "--pool", pool, "2", "1")
		return err
	})
}

// qcow2SnapshotTime makes a qcow2 image with n bytes allocated (zero
// clusters, metadata only), then times creating an overlay over it.
func qcow2SnapshotTime(dir string, n int64) (Result, error) {
	img := filepath.Join(dir, "image.qcow2")
	if _, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", img, fmt.Sprint(2*n)); err != nil {
		return Result{}, err
	}
	// qemu-io takes at most 2 GiB a request: zero in 1 GiB steps.
	args := []string{"-f", "qcow2"}
	for off := int64(0); off < n; off += 1 << 30 {
		args = append(args, "-c", fmt.Sprintf("write -z %d %d", off, min(n-off, 1<<30)))
	}
	if _, err := runCmd("qemu-io", append(args, img)...); err != nil {
		return Result{}, err
	}
	return timed(func() error {
		_, err := runCmd("qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "qcow2", filepath.Join(dir, "snap.qcow2"))
		return err
	})
}
