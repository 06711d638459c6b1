package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSummaryShowsFailuresSkipsAndTheCount(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"run","Package":"m/p","Test":"TestOK"}`,
		`{"Action":"output","Package":"m/p","Test":"TestOK","Output":"=== RUN   TestOK\n"}`,
		`{"Action":"output","Package":"m/p","Test":"TestOK","Output":"chatter of a passing test\n"}`,
		`{"Action":"pass","Package":"m/p","Test":"TestOK"}`,
		`{"Action":"output","Package":"m/p","Test":"TestSkip","Output":"    x_test.go:9: needs root\n"}`,
		`{"Action":"skip","Package":"m/p","Test":"TestSkip"}`,
		`{"Action":"output","Package":"m/p","Test":"TestBad/case","Output":"    x_test.go:20: want 1, got 2\n"}`,
		`{"Action":"fail","Package":"m/p","Test":"TestBad/case"}`,
		`{"Action":"output","Package":"m/p","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}`,
		`{"Action":"fail","Package":"m/p","Test":"TestBad"}`,
		`{"Action":"fail","Package":"m/p","Elapsed":1.5}`,
		`{"Action":"pass","Package":"m/q","Test":"TestQ"}`,
		`{"Action":"pass","Package":"m/q","Elapsed":0.2}`,
	}, "\n")
	var out strings.Builder
	code := summarize(strings.NewReader(in), &out)
	assert.Equal(t, 1, code)
	s := out.String()
	assert.Contains(t, s, "want 1, got 2", "a failed subtest's output is shown")
	assert.NotContains(t, s, "chatter of a passing test")
	assert.Contains(t, s, "FAIL\tm/p\t1.5s")
	assert.Contains(t, s, "ok  \tm/q\t0.2s")
	assert.Contains(t, s, "m/p TestSkip: needs root")
	assert.True(t, strings.HasSuffix(s, "\n2 passed, 2 failed, 1 skipped\n"), "closing line: %q", s)
}

func TestNothingRunIsAFailure(t *testing.T) {
	var out strings.Builder
	assert.Equal(t, 1, summarize(strings.NewReader(""), &out))
}

// A package that times out names the tests that were still running, with
// what they printed.
func TestATimedOutPackageShowsItsRunningTests(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"run","Package":"m/p","Test":"TestHangs"}`,
		`{"Action":"output","Package":"m/p","Test":"TestHangs","Output":"panic: test timed out after 14m0s\n"}`,
		`{"Action":"output","Package":"m/p","Output":"FAIL\tm/p\t840.1s\n"}`,
		`{"Action":"fail","Package":"m/p","Elapsed":840.1}`,
	}, "\n")
	var out strings.Builder
	assert.Equal(t, 1, summarize(strings.NewReader(in), &out))
	assert.Contains(t, out.String(), "--- TestHangs (did not end)\npanic: test timed out after 14m0s")
}

// make test runs some tests a second time with a kernel feature on: a
// test skipped in one run and passed in the other is not listed as
// skipped, and one skipped in both still is.
func TestATestSkippedOnceAndRunOnceIsNotListedAsSkipped(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"output","Package":"m/p","Test":"TestURing","Output":"    x_test.go:9: io_uring is off\n"}`,
		`{"Action":"skip","Package":"m/p","Test":"TestURing"}`,
		`{"Action":"output","Package":"m/p","Test":"TestNeverRuns","Output":"    x_test.go:19: needs a peer\n"}`,
		`{"Action":"skip","Package":"m/p","Test":"TestNeverRuns"}`,
		`{"Action":"pass","Package":"m/p","Elapsed":0.1}`,
		`{"Action":"pass","Package":"m/p","Test":"TestURing"}`,
		`{"Action":"output","Package":"m/p","Test":"TestNeverRuns","Output":"    x_test.go:19: needs a peer\n"}`,
		`{"Action":"skip","Package":"m/p","Test":"TestNeverRuns"}`,
		`{"Action":"pass","Package":"m/p","Elapsed":0.1}`,
	}, "\n")
	var out strings.Builder
	assert.Equal(t, 0, summarize(strings.NewReader(in), &out))
	s := out.String()
	assert.NotContains(t, s, "io_uring is off")
	assert.Contains(t, s, "m/p TestNeverRuns: needs a peer")
	assert.True(t, strings.HasSuffix(s, "\n1 passed, 0 failed, 1 skipped\n"), "closing line: %q", s)
}
