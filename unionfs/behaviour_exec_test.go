package unionfs_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/internal/fstest"
)

// hostFile is a file of the host's, as a Spec value: programs and the
// C library copied into lower layers, so the checks run real ones.
func hostFile(path string, executable bool) string {
	data, err := os.ReadFile(path)
	if err != nil {
		// Every Linux host that runs these tests has them; a missing
		// one fails the check that needs it, with the path in view.
		return "missing host file " + path
	}
	if executable {
		return fstest.Executable(string(data))
	}
	return string(data)
}

// hostLibc is the path of the C library the host's programs load.
func hostLibc() string {
	for _, p := range []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/usr/lib/libc.so.6"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/lib/libc.so.6"
}

// runProgram runs prog with args through /bin/sh's exec, with extra
// environment. The union serving the mount runs in this process: a Go
// fork holds its thread (and a scheduler processor) until the child's
// execve returns, so a child whose execve waited on this process's own
// FUSE server could stall it behind a garbage collection. The shell is
// a process of its own when it executes prog.
func runProgram(env []string, prog string, args ...string) ([]byte, error) {
	cmd := exec.Command("/bin/sh", append([]string{"-c", `exec "$0" "$@"`, prog}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

// startProgram is runProgram for a program left running.
func startProgram(t *testing.T, prog string, args ...string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", append([]string{"-c", `exec "$0" "$@"`, prog}, args...)...)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// refusedAsBusy checks that a program did not run because its file was
// open for writing: the shell reports execve's ETXTBSY and exits 126.
func refusedAsBusy(t *testing.T, out []byte, err error) {
	t.Helper()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the program ran: %s", out)
	assert.Equal(t, 126, exit.ExitCode(), "%s", out)
	assert.Contains(t, string(out), "Text file busy") // strerror(ETXTBSY)
}

// execLower is a lower layer with real programs: /bin/true, /bin/cat,
// a shell script, and the C library the programs link against.
var execLower = fstest.Spec{
	"bin/true":      hostFile("/bin/true", true),
	"bin/cat":       hostFile("/bin/cat", true),
	"bin/sleep":     hostFile("/bin/sleep", true),
	"bin/script":    fstest.Executable("#!/bin/sh\necho script ran with \"$1\"\n"),
	"lib/libc.so.6": hostFile(hostLibc(), false),
}

// execBehaviours are checks of programs run from the merged view: the
// kernel passes its own flags (exec) in the open it asks of a FUSE
// union, and maps libraries with PROT_EXEC.
var execBehaviours = []behaviour{
	{
		name:  "programs run from lower files and from new and copied-up files",
		lower: execLower,
		run: func(t *testing.T, m string) {
			out, err := runProgram(nil, m+"/bin/true")
			require.NoError(t, err, "a lower program: %s", out)

			data, err := os.ReadFile(m + "/bin/true")
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(m+"/bin/new-true", data, 0o755))
			out, err = runProgram(nil, m+"/bin/new-true")
			assert.NoError(t, err, "a program written through the mount: %s", out)

			require.NoError(t, os.Chmod(m+"/bin/cat", 0o750)) // copy-up
			out, err = runProgram(nil, m+"/bin/cat", m+"/bin/script")
			assert.NoError(t, err, "a copied-up program: %s", out)
			assert.Contains(t, string(out), "script ran")
		},
	},
	{
		name:  "a shebang script runs with its interpreter on the mount too",
		lower: execLower,
		run: func(t *testing.T, m string) {
			out, err := runProgram(nil, m+"/bin/script", "an argument")
			require.NoError(t, err, "%s", out)
			assert.Equal(t, "script ran with an argument\n", string(out))

			// The kernel runs the interpreter named in the first line
			// with the script's path: cat prints the script.
			script := "#!" + m + "/bin/cat\nprinted by its own interpreter\n"
			require.NoError(t, os.WriteFile(m+"/bin/cat-script", []byte(script), 0o755))
			out, err = runProgram(nil, m+"/bin/cat-script")
			require.NoError(t, err, "%s", out)
			assert.Equal(t, script, string(out))
		},
	},
	{
		name:  "a program loads a shared library that lives on the mount",
		lower: execLower,
		run: func(t *testing.T, m string) {
			// cat of its own maps, with the C library taken from the
			// mount: ld.so maps it executable from there.
			out, err := runProgram([]string{"LD_LIBRARY_PATH=" + m + "/lib"}, m+"/bin/cat", "/proc/self/maps")
			require.NoError(t, err, "%s", out)
			lib := filepath.Join(m, "lib/libc.so.6")
			var execMapped bool
			for _, line := range strings.Split(string(out), "\n") {
				fields := strings.Fields(line)
				if len(fields) == 6 && fields[5] == lib && strings.Contains(fields[1], "x") {
					execMapped = true
				}
			}
			assert.True(t, execMapped, "no executable mapping of %s in:\n%s", lib, out)
		},
	},
	{
		name:  "a program open for writing does not run nor opens for writing while it runs",
		lower: execLower,
		run: func(t *testing.T, m string) {
			data, err := os.ReadFile(m + "/bin/true")
			require.NoError(t, err)
			w, err := os.OpenFile(m+"/bin/being-written", os.O_WRONLY|os.O_CREATE, 0o755)
			require.NoError(t, err)
			_, err = w.Write(data)
			require.NoError(t, err)
			out, err := runProgram(nil, m+"/bin/being-written")
			refusedAsBusy(t, out, err)
			require.NoError(t, w.Close())
			out, err = runProgram(nil, m+"/bin/being-written")
			assert.NoError(t, err, "exec once closed: %s", out)

			// A lower program, running: opening it for writing (which
			// would copy it up) is refused before the union is asked.
			sleeper := startProgram(t, m+"/bin/sleep", "3600") // killed at cleanup
			require.True(t, fstest.WaitFor(fstest.Patience, func() bool {
				exe, _ := os.Readlink("/proc/" + strconv.Itoa(sleeper.Process.Pid) + "/exe")
				return strings.HasSuffix(exe, "/bin/sleep") && strings.HasPrefix(exe, m)
			}), "sleep did not start from the mount")
			_, err = os.OpenFile(m+"/bin/sleep", os.O_WRONLY, 0)
			assert.Equal(t, syscall.ETXTBSY, errnoOf(err), "open for writing while it runs")
			var st unix.Stat_t
			require.NoError(t, unix.Stat(m+"/bin/sleep", &st))
			assert.Equal(t, uint32(0o755), st.Mode&0o7777)
		},
	},
}
