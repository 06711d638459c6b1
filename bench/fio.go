package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// fioResult is what a fio run measured.
type fioResult struct {
	IOPS, MiBps float64
}

// runFio runs a job file against an instance: a directory (union
// targets, through the env's DIR), an NBD URI or a file/device.
func (e *Env) runFio(inst *Instance, job string, vars map[string]string) (fioResult, error) {
	args := []string{"--output-format=json"}
	switch {
	case inst.URI != "":
		args = append(args, "--ioengine=nbd", "--uri="+inst.URI)
	case inst.File != "":
		args = append(args, "--ioengine=libaio", "--direct=1", "--filename="+inst.File)
	}
	args = append(args, filepath.Join(e.FioDir, job))
	cmd := exec.Command("fio", args...)
	cmd.Env = append(os.Environ(), "DIR="+inst.Dir, "SIZE="+e.size.fioSize, fmt.Sprintf("BIGSIZE=%d", e.size.bigFile),
		fmt.Sprintf("RUNTIME=%d", int(e.size.fioRuntime.Seconds())), "RUN=0")
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fioResult{}, fmt.Errorf("fio %s: %v: %s", job, err, fioError(string(out)))
	}
	s := string(out)
	i := strings.Index(s, "{")
	if i < 0 {
		return fioResult{}, fmt.Errorf("fio %s: no JSON in its output: %s", job, lastLines(s, 3))
	}
	var parsed struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw"`
				IO   int64   `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw"`
				IO   int64   `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.NewDecoder(strings.NewReader(s[i:])).Decode(&parsed); err != nil {
		return fioResult{}, fmt.Errorf("fio %s: %v", job, err)
	}
	if len(parsed.Jobs) == 0 || parsed.Jobs[0].Error != 0 {
		return fioResult{}, fmt.Errorf("fio %s: job failed: %s", job, lastLines(s[:i], 3))
	}
	j := parsed.Jobs[0]
	if j.Write.IO > 0 {
		return fioResult{IOPS: j.Write.IOPS, MiBps: j.Write.BW / 1024}, nil
	}
	return fioResult{IOPS: j.Read.IOPS, MiBps: j.Read.BW / 1024}, nil
}

// fioError picks fio's first error line out of its output (which is
// mostly JSON).
func fioError(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "fio:") && !strings.Contains(l, "connected to") {
			if len(l) > 200 {
				l = l[:200] + "..."
			}
			return strings.TrimSpace(l)
		}
	}
	return lastLines(out, 3)
}
