package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/unionmount/unionmount/internal/userns"
)

// RootlessTargets are the union targets measured in a user namespace,
// where neither kernel overlay's privileged mount nor FUSE passthrough
// is available; the first is the reference.
var RootlessTargets = []string{"fuse-overlayfs", "unionmount", "unionmount-uring"}

// RunInUserNamespace measures the union workloads named in workloads on
// the rootless targets, by running self (this harness's binary, started
// with insideFlag) as root of a user namespace whose ids are host ids
// 100000 and up, as a rootless container runs. It returns the rows as
// the Rootless family. The child's progress goes to progress.
func RunInUserNamespace(cfg *Config, self, insideFlag string, workloads []string, progress io.Writer) ([]Row, error) {
	if err := userns.Available(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(cfg.Dir, "userns-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	copies, err := userns.Prepare(dir, self, cfg.UnionmountBin)
	if err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		return nil, err
	}
	if err := os.Chmod(out, 0o777); err != nil {
		return nil, err
	}
	args := []string{copies[0], insideFlag, "--targets", strings.Join(RootlessTargets, ","),
		"--workloads", strings.Join(workloads, ","), "--repeat", strconv.Itoa(cfg.Repeat),
		"--unionmount", copies[1], "--out", out}
	if cfg.Quick {
		args = append(args, "--quick")
	}
	cmd := userns.Command(dir, `exec "$@" >/dev/null`, args...)
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("the run in a user namespace failed: %w", err)
	}
	rep, err := ReadJSON(filepath.Join(out, "unionbench.json"))
	if err != nil {
		return nil, err
	}
	var rows []Row
	for _, r := range rep.Rows {
		if r.Family == Union {
			r.Family = Rootless
			rows = append(rows, r)
		}
	}
	return rows, nil
}
