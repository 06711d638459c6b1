package bench

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeTarget records, in a log shared by all targets, each set-up and
// tear-down of its instances.
type fakeTarget struct {
	name     string
	family   Family
	skip     string
	setupErr error
	log      *[]string
	made     int
}

func (t *fakeTarget) Name() string         { return t.name }
func (t *fakeTarget) Family() Family       { return t.family }
func (t *fakeTarget) Skip(*Config) string  { return t.skip }
func (t *fakeTarget) String() string       { return t.name }
func (t *fakeTarget) record(what string)   { *t.log = append(*t.log, what) }
func (t *fakeTarget) instanceName() string { return fmt.Sprintf("%s#%d", t.name, t.made) }

func (t *fakeTarget) Setup(*Env) (*Instance, error) {
	if t.setupErr != nil {
		return nil, t.setupErr
	}
	t.made++
	name := t.instanceName()
	t.record("setup " + name)
	return &Instance{Dir: name, teardown: func() error { t.record("close " + name); return nil }}, nil
}

// fakeWorkload logs "workload on instance" and measures the run's
// position in the log, so rows can be checked too.
func fakeWorkload(name string, family Family, fresh bool, log *[]string) Workload {
	return Workload{Name: name, Family: family, Fresh: fresh, Run: func(_ *Env, inst *Instance) (Result, error) {
		*log = append(*log, name+" on "+inst.Dir)
		return Result{Value: float64(len(*log)), Unit: "steps", HigherBetter: true}, nil
	}}
}

// Each round runs every workload once on every target, so that A's and
// B's repeats of a workload alternate (A B A B A B), rather than A's
// three repeats then B's; shared instances live across the rounds and
// fresh ones are made per run.
func TestRepeatsRunInRoundsAcrossTargets(t *testing.T) {
	var log []string
	a := &fakeTarget{name: "A", family: Block, log: &log}
	b := &fakeTarget{name: "B", family: Block, log: &log}
	workloads := []Workload{
		fakeWorkload("shared", Block, false, &log),
		fakeWorkload("fresh", Block, true, &log),
	}
	var lines []string
	cfg := &Config{Repeat: 3, Progress: func(line string) { lines = append(lines, line) }}
	rep := Run(cfg, nil, []Target{a, b}, workloads)

	assert.Equal(t, []string{
		"setup A#1", "shared on A#1", "setup B#1", "shared on B#1",
		"setup A#2", "fresh on A#2", "close A#2", "setup B#2", "fresh on B#2", "close B#2",
		"shared on A#1", "shared on B#1",
		"setup A#3", "fresh on A#3", "close A#3", "setup B#3", "fresh on B#3", "close B#3",
		"shared on A#1", "shared on B#1",
		"setup A#4", "fresh on A#4", "close A#4", "setup B#4", "fresh on B#4", "close B#4",
		"close A#1", "close B#1",
	}, log, "runs alternate between the targets; shared instances live to the end of the run")

	require.Len(t, rep.Rows, 4)
	for i, want := range []struct{ target, workload string }{{"A", "shared"}, {"A", "fresh"}, {"B", "shared"}, {"B", "fresh"}} {
		row := rep.Rows[i]
		assert.Equal(t, want.target, row.Target, "row %d", i)
		assert.Equal(t, want.workload, row.Workload, "row %d", i)
		assert.Len(t, row.Values, 3, "row %d: a figure per round", i)
	}
	require.Len(t, lines, 12, "a progress line per run")
	assert.True(t, strings.HasPrefix(lines[0], "[1/12] A: shared (run 1,"), lines[0])
	assert.True(t, strings.HasPrefix(lines[3], "[4/12] B: fresh (run 1,"), lines[3])
	assert.True(t, strings.HasPrefix(lines[11], "[12/12] B: fresh (run 3,"), lines[11])
}

// A target that cannot run, one whose set-up fails, and a workload of
// another family are reported as before, and the progress count still
// reaches its total.
func TestRoundsRecordSkipsAndErrors(t *testing.T) {
	var log []string
	ok := &fakeTarget{name: "ok", family: Block, log: &log}
	absent := &fakeTarget{name: "absent", family: Block, skip: "not installed", log: &log}
	broken := &fakeTarget{name: "broken", family: Block, setupErr: errors.New("no device"), log: &log}
	union := &fakeTarget{name: "union", family: Union, log: &log}
	// Two families may have a workload of the same name: each target
	// runs only its own family's.
	workloads := []Workload{fakeWorkload("w", Block, false, &log), fakeWorkload("u", Union, true, &log),
		fakeWorkload("w", Union, true, &log)}
	var lines []string
	cfg := &Config{Repeat: 2, Progress: func(line string) { lines = append(lines, line) }}
	rep := Run(cfg, nil, []Target{ok, absent, broken, union}, workloads)

	require.Len(t, rep.Rows, 5)
	byTarget := map[string]Row{}
	for _, r := range rep.Rows {
		byTarget[r.Target+"/"+r.Workload] = r
	}
	assert.Len(t, byTarget["ok/w"].Values, 2)
	assert.Equal(t, "not installed", byTarget["absent/w"].Skipped)
	assert.Empty(t, byTarget["absent/w"].Values)
	assert.Equal(t, "set-up: no device", byTarget["broken/w"].Error)
	assert.Len(t, byTarget["union/u"].Values, 2)
	assert.Len(t, byTarget["union/w"].Values, 2)
	assert.Equal(t, 2, strings.Count(strings.Join(log, "\n"), "w on ok#"), "the block w runs on the block target, once a round")
	assert.Equal(t, 2, strings.Count(strings.Join(log, "\n"), "w on union#"), "the union w runs on the union target, once a round")
	require.Len(t, lines, 10)
	assert.True(t, strings.HasPrefix(lines[9], "[10/10] "), lines[9])
}
