package bench

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Env is what every target of a run shares: the lower layer, prepared
// once, and a tarball of a real source tree.
type Env struct {
	cfg   *Config
	size  sizes
	lower string
	// srcTar is the tarball untarred into the union; the same tree sits
	// in the lower layer under src/ for find and grep.
	srcTar string
	// FioDir holds the job files.
	FioDir string
	// pending holds figures measured together with another workload's,
	// by "target/workload", oldest first, for their own workloads to
	// take (see together in livepool.go).
	pending map[string][]figure
	// rootfs is a Debian root filesystem unpacked once, on first use,
	// as the process-start row's lower layer (rootfsErr why not).
	rootfs    string
	rootfsErr error
}

// blockBytes is the block targets' volume size in bytes.
func (s sizes) blockBytesOf() int64 {
	n, _ := parseSize(s.blockSize)
	return n
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	var n int64
	_, err := fmt.Sscan(s, &n)
	return n * mult, err
}

// NewEnv prepares the lower layer in cfg.Dir: a file of random data (read
// and copied up), files to chmod, and a source tree.
func NewEnv(cfg *Config, fioDir string) (*Env, error) {
	s := cfg.sizes()
	s.blockBytes = s.blockBytesOf()
	e := &Env{cfg: cfg, size: s, lower: filepath.Join(cfg.Dir, "lower"), FioDir: fioDir}
	if err := os.MkdirAll(filepath.Join(e.lower, "chmod"), 0o755); err != nil {
		return nil, err
	}
	if err := writeRandomFile(filepath.Join(e.lower, "big"), s.bigFile); err != nil {
		return nil, err
	}
	for i := 0; i < s.chmodFiles; i++ {
		if err := os.WriteFile(filepath.Join(e.lower, "chmod", fmt.Sprintf("f%05d", i)), []byte("x"), 0o644); err != nil {
			return nil, err
		}
	}
	src, subdirs := sourceTree(cfg.Quick)
	e.srcTar = filepath.Join(cfg.Dir, "src.tar")
	args := append([]string{"-cf", e.srcTar, "-C", src}, subdirs...)
	if _, err := runCmd("tar", args...); err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Join(e.lower, "src"), 0o755); err != nil {
		return nil, err
	}
	if _, err := runCmd("tar", "-xf", e.srcTar, "-C", filepath.Join(e.lower, "src")); err != nil {
		return nil, err
	}
	return e, nil
}

// sourceTree picks a real source tree: the Go toolchain's src (a part of
// it for a quick run), or the system headers where Go is not installed.
func sourceTree(quick bool) (string, []string) {
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		root := strings.TrimSpace(string(out))
		if st, err := os.Stat(filepath.Join(root, "src", "net")); err == nil && st.IsDir() {
			if quick {
				return filepath.Join(root, "src"), []string{"net/http"}
			}
			return root, []string{"src"}
		}
	}
	if quick {
		return "/usr/include", []string{"linux"}
	}
	return "/usr", []string{"include"}
}

func writeRandomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	for written := int64(0); written < size; written += int64(len(buf)) {
		n := min(int64(len(buf)), size-written)
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
	}
	return f.Sync()
}
