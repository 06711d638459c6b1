package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// uringParameter is the fuse module's switch for FUSE-over-io_uring,
// off by default; root can turn it on.
const uringParameter = "/sys/module/fuse/parameters/enable_uring"

// uringSkip says why the io_uring target cannot run, or "" when it can
// (the switch is on, or the run may turn it on with EnableFUSEURing and
// is root).
func uringSkip(cfg *Config) string {
	data, err := os.ReadFile(uringParameter)
	if err != nil {
		return "the kernel has no FUSE-over-io_uring (" + uringParameter + " is missing; Linux 6.14+ with CONFIG_FUSE_IO_URING)"
	}
	if strings.TrimSpace(string(data)) != "Y" {
		if !cfg.TurnOnURing {
			return uringParameter + " is N and this run may not turn it on (--fuse-uring=false)"
		}
		if !isRoot() {
			return uringParameter + " is N and only root can turn it on"
		}
	}
	return needRootAndFuse(cfg)
}

// EnableFUSEURing turns FUSE-over-io_uring on for the run where it is
// off and root can turn it on. The returned function puts the switch
// back; it is a no-op when nothing was changed.
func EnableFUSEURing() (restore func(), err error) {
	data, err := os.ReadFile(uringParameter)
	if err != nil || strings.TrimSpace(string(data)) == "Y" || !isRoot() {
		return func() {}, nil
	}
	old := strings.TrimSpace(string(data))
	if err := os.WriteFile(uringParameter, []byte("Y"), 0); err != nil {
		return func() {}, fmt.Errorf("turn FUSE-over-io_uring on: %w", err)
	}
	return func() { os.WriteFile(uringParameter, []byte(old), 0) }, nil
}

// checkTransport fails unless the union at mnt serves its requests over
// want, as `unionmount status` reports it: a mount asked for io_uring
// falls back to /dev/fuse where the kernel refuses, and its figures must
// not stand in the io_uring column.
func checkTransport(bin, mnt, want string) error {
	out, err := exec.Command(bin, "status", "--json").Output()
	if err != nil {
		return fmt.Errorf("unionmount status --json: %w", err)
	}
	var mounts []struct {
		Mountpoint string `json:"mountpoint"`
		Record     struct {
			Mode struct {
				Transport string `json:"transport"`
			} `json:"mode"`
		} `json:"record"`
	}
	if err := json.Unmarshal(out, &mounts); err != nil {
		return fmt.Errorf("unionmount status --json: %w", err)
	}
	real, _ := filepath.EvalSymlinks(mnt)
	for _, m := range mounts {
		if m.Mountpoint == mnt || m.Mountpoint == real {
			if got := m.Record.Mode.Transport; got != want {
				return fmt.Errorf("%s serves over %s, not %s", mnt, got, want)
			}
			return nil
		}
	}
	return fmt.Errorf("unionmount status does not list %s", mnt)
}
