// Package mountstate keeps a record of each running union daemon, so
// that `unionmount status` can say which unions are mounted with which
// layers: /proc/mounts shows only FUSE's own options for them. A daemon
// writes its record once its mount is ready and removes it when it ends;
// status joins the records with the mount table and shows each union
// there, with or without one (another user's, or a daemon that was
// killed). It owns the record's format and place, nothing of the union.
package mountstate

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Record is what a daemon says of its mount.
type Record struct {
	Mountpoint string    `json:"mountpoint"`
	PID        int       `json:"pid"`
	Lowers     []string  `json:"lowers"`
	Upper      string    `json:"upper,omitempty"`
	Work       string    `json:"work,omitempty"`
	Options    []string  `json:"options"`
	Mode       any       `json:"mode"`
	Log        string    `json:"log,omitempty"`
	Started    time.Time `json:"started"`
	Version    string    `json:"version"`
	// Device is the mount's device number as the mount table gives it
	// ("0:53"): the key that joins a record to its mount.
	Device string `json:"device"`
	// Control is the daemon's control socket (a unix socket, mode 0600,
	// beside the record), where `unionmount branch` asks for branch
	// changes; empty for a daemon without one.
	Control string `json:"control,omitempty"`
}

// ControlPath is where the daemon of the mount with device dev keeps its
// control socket in dir.
func ControlPath(dir, dev string) string {
	return filepath.Join(dir, "mount-"+strings.ReplaceAll(dev, ":", "-")+".sock")
}

// Mount is one union in the mount table, with its daemon's record when
// one is found.
type Mount struct {
	Mountpoint string  `json:"mountpoint"`
	Device     string  `json:"device"`
	Source     string  `json:"source"`
	Record     *Record `json:"record,omitempty"`
	// Note says why a mount has no record.
	Note string `json:"note,omitempty"`
}

// Dir is where this user's daemons keep their records and logs:
// /run/unionmount for root, $XDG_RUNTIME_DIR/unionmount for a user with a
// runtime dir, and /tmp/unionmount-UID otherwise.
func Dir() string {
	if os.Geteuid() == 0 {
		if fi, err := os.Stat("/run"); err == nil && fi.IsDir() && unix.Access("/run", unix.W_OK) == nil {
			return "/run/unionmount"
		}
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "unionmount")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("unionmount-%d", os.Geteuid()))
}

// DeviceOf returns the device number of the filesystem at path in the
// mount table's form.
func DeviceOf(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)), nil
}

// Write stores r in dir, whole or not at all (a temporary file renamed
// into place), and returns the function that removes it.
func Write(dir string, r Record) (remove func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("record dir: %w", err)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	name := filepath.Join(dir, "mount-"+strings.ReplaceAll(r.Device, ":", "-")+".json")
	tmp, err := os.CreateTemp(dir, ".record-*")
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("record: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("record: %w", err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("record: %w", err)
	}
	return func() { os.Remove(name) }, nil
}

// List returns every mount of fstype in this mount namespace, joined
// with the records in dir whose daemon still runs (none for dir "").
func List(dir, fstype string) ([]Mount, error) {
	var records map[string]*Record
	if dir != "" {
		records = readRecords(dir)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m, ok := parseMountinfo(sc.Text(), fstype)
		if !ok {
			continue
		}
		if r, ok := records[m.Device]; ok && r.Mountpoint == m.Mountpoint {
			m.Record = r
		} else {
			m.Note = "no record: another user's daemon, or one that did not end cleanly"
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Mountpoint < out[j].Mountpoint })
	return out, sc.Err()
}

// readRecords reads dir's records, dropping those whose daemon is gone.
func readRecords(dir string) map[string]*Record {
	out := map[string]*Record{}
	names, _ := filepath.Glob(filepath.Join(dir, "mount-*.json"))
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		var r Record
		if json.Unmarshal(data, &r) != nil {
			continue
		}
		if err := syscall.Kill(r.PID, 0); errors.Is(err, syscall.ESRCH) {
			os.Remove(name) // a daemon killed without its clean-up
			continue
		}
		out[r.Device] = &r
	}
	return out
}

// parseMountinfo reads one line of /proc/self/mountinfo (proc(5)):
// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER.
func parseMountinfo(line, fstype string) (Mount, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return Mount{}, false
	}
	a, b := strings.Fields(pre), strings.Fields(post)
	if len(a) < 5 || len(b) < 2 || b[0] != fstype {
		return Mount{}, false
	}
	return Mount{Mountpoint: unescape(a[4]), Device: a[2], Source: unescape(b[1])}, true
}

// unescape undoes the mount table's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
