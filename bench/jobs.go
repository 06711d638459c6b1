package bench

import (
	"embed"
	"os"
	"path/filepath"
)

//go:embed fio/*.fio
var jobFiles embed.FS

// WriteJobFiles puts the fio job files (which the binary carries) in
// dir/fio and returns that directory.
func WriteJobFiles(dir string) (string, error) {
	out := filepath.Join(dir, "fio")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	ents, err := jobFiles.ReadDir("fio")
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		data, err := jobFiles.ReadFile("fio/" + e.Name())
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(out, e.Name()), data, 0o644); err != nil {
			return "", err
		}
	}
	return out, nil
}
