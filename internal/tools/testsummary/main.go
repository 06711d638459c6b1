// Command testsummary reads `go test -json` on standard input and prints
// what a person running `make test` needs: each package's result as it
// ends, the whole output of every failed test, and at the end the tests
// that were skipped with their reasons, then one closing line
// "N passed, M failed, K skipped". It exits non-zero when anything
// failed, so a pipeline keeps the test run's verdict.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of test2json's output (go doc test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

type key struct{ pkg, test string }

func main() {
	os.Exit(summarize(os.Stdin, os.Stdout))
}

func summarize(in io.Reader, out io.Writer) int {
	var (
		output           = map[key]*strings.Builder{}
		skipped          = map[key]string{}
		ran              = map[key]bool{}
		passed, failed   int
		failedPkgs       []string
		sawAnyTestResult bool
	)
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// Not test2json (a build error printed by go itself).
			fmt.Fprintln(out, sc.Text())
			continue
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "output":
			b := output[k]
			if b == nil {
				b = &strings.Builder{}
				output[k] = b
			}
			b.WriteString(e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" {
				// A package's end: one line, as go test prints it, and
				// the package's own output when it failed (a panic, a
				// time-out, a build failure).
				switch e.Action {
				case "fail":
					failedPkgs = append(failedPkgs, e.Package)
					// Tests that never ended (a time-out's panic names
					// them and dumps every goroutine) first, then the
					// package's own output.
					var open []string
					for kk := range output {
						if kk.pkg == e.Package && kk.test != "" {
							open = append(open, kk.test)
						}
					}
					sort.Strings(open)
					for _, test := range open {
						kk := key{e.Package, test}
						fmt.Fprintf(out, "--- %s (did not end)\n%s", test, output[kk].String())
						delete(output, kk)
					}
					if b := output[k]; b != nil {
						fmt.Fprint(out, b.String())
					}
					fmt.Fprintf(out, "FAIL\t%s\t%.1fs\n", e.Package, e.Elapsed)
				case "pass":
					fmt.Fprintf(out, "ok  \t%s\t%.1fs\n", e.Package, e.Elapsed)
				}
				delete(output, k)
				continue
			}
			sawAnyTestResult = true
			switch e.Action {
			case "pass":
				passed++
				ran[k] = true
			case "fail":
				failed++
				ran[k] = true
				if b := output[k]; b != nil && !strings.Contains(e.Test, "/") {
					// A top-level test's output holds its subtests'.
					fmt.Fprint(out, b.String())
				}
			case "skip":
				skipped[k] = fmt.Sprintf("%s %s: %s", shortPkg(e.Package), e.Test, skipReason(output[k]))
			}
			if !strings.Contains(e.Test, "/") {
				// Subtests' output is kept for their parent.
				for kk := range output {
					if kk.pkg == e.Package && strings.HasPrefix(kk.test, e.Test+"/") {
						delete(output, kk)
					}
				}
				delete(output, k)
			} else if b := output[k]; b != nil {
				parent := key{e.Package, e.Test[:strings.LastIndex(e.Test, "/")]}
				if output[parent] == nil {
					output[parent] = &strings.Builder{}
				}
				output[parent].WriteString(b.String())
				delete(output, k)
			}
		}
	}
	// A test that one run skips and another runs (make test runs some
	// again with a kernel feature on) ran: it is not listed as skipped.
	var notRun []string
	for k, line := range skipped {
		if !ran[k] {
			notRun = append(notRun, line)
		}
	}
	if len(notRun) > 0 {
		sort.Strings(notRun)
		fmt.Fprintf(out, "\nskipped (%d), with their reasons:\n", len(notRun))
		for _, s := range notRun {
			fmt.Fprintf(out, "  %s\n", s)
		}
	}
	if len(failedPkgs) > 0 {
		fmt.Fprintf(out, "\nfailed packages: %s\n", strings.Join(failedPkgs, " "))
	}
	fmt.Fprintf(out, "\n%d passed, %d failed, %d skipped\n", passed, failed, len(notRun))
	if failed > 0 || len(failedPkgs) > 0 || !sawAnyTestResult {
		return 1
	}
	return 0
}

// skipReason is the message t.Skip printed: the last line of the
// test's output that is not the framework's own.
func skipReason(b *strings.Builder) string {
	if b == nil {
		return "(no reason given)"
	}
	var reason string
	for _, line := range strings.Split(b.String(), "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		// "file_test.go:12: reason"
		if i := strings.Index(t, ".go:"); i >= 0 {
			if j := strings.Index(t[i+4:], ": "); j >= 0 {
				t = t[i+4+j+2:]
			}
		}
		reason = t
	}
	if reason == "" {
		return "(no reason given)"
	}
	return reason
}

func shortPkg(p string) string {
	return strings.TrimPrefix(p, "github.com/unionmount/unionmount/")
}
