package bench

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPercentileIsTheNearestRank(t *testing.T) {
	var v []time.Duration
	for i := 10; i >= 1; i-- {
		v = append(v, time.Duration(i)*time.Millisecond)
	}
	assert.Equal(t, 5*time.Millisecond, percentile(v, 0.5))
	assert.Equal(t, 9*time.Millisecond, percentile(v, 0.9))
	assert.Equal(t, 10*time.Millisecond, percentile(v, 1))
	assert.Equal(t, 7*time.Millisecond, percentile([]time.Duration{7 * time.Millisecond}, 0.9))
	assert.Equal(t, 10*time.Millisecond, v[0], "the caller's slice is left in its order")
}

// Figures measured together reach their own workloads, one run's each,
// in the order measured, and a figure a run could not give says why.
func TestFiguresMeasuredTogetherGoToTheirWorkloads(t *testing.T) {
	e := &Env{}
	runs := 0
	measure := func(*Env, *Instance) (map[string]figure, error) {
		runs++
		return map[string]figure{
			"a": {Result: Result{Value: float64(runs)}},
			"b": {Result: Result{Value: float64(10 * runs)}},
			"c": {err: errors.New("none this time")},
		}, nil
	}
	inst := &Instance{liveName: "t"}
	a, b, c := together("a", measure), together("b", measure), together("c", measure)
	for want := 1; want <= 2; want++ {
		r, err := a(e, inst)
		require.NoError(t, err)
		assert.Equal(t, float64(want), r.Value)
	}
	for want := 1; want <= 2; want++ {
		r, err := b(e, inst)
		require.NoError(t, err)
		assert.Equal(t, float64(10*want), r.Value)
	}
	assert.Equal(t, 2, runs, "b took a's runs' figures")
	_, err := c(e, inst)
	assert.EqualError(t, err, "none this time")
	r, err := b(e, &Instance{liveName: "other"})
	require.NoError(t, err)
	assert.Equal(t, 3, runs, "another target's figures are its own")
	assert.Equal(t, 30.0, r.Value)
}
