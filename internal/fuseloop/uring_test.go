package fuseloop

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// newTestURing sets up a ring or skips when the kernel has no io_uring for
// us (kernel.io_uring_disabled, seccomp, an old kernel).
func newTestURing(t *testing.T, entries uint32) *uring {
	t.Helper()
	r, err := newURing(entries)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		t.Skipf("io_uring is not available here: %v", err)
	}
	require.NoError(t, err)
	t.Cleanup(r.close)
	return r
}

func TestURingNopsRoundTripWithTheirUserData(t *testing.T) {
	r := newTestURing(t, 8)
	require.EqualValues(t, 8, r.sqEntries)

	// Enough rounds that head and tail wrap the masks many times.
	for round := range 100 {
		for i := range 5 {
			ok := r.prepare(func(s *ioSQE) {
				s.opcode = ioringOpNop
				s.userData = uint64(round*1000 + i)
			})
			require.True(t, ok, "round %d sqe %d", round, i)
		}
		require.EqualValues(t, 5, r.unsubmitted())
		n, err := r.enter(5, 5, ioringEnterGetEvents)
		require.NoError(t, err)
		require.Equal(t, 5, n)
		assert.EqualValues(t, 0, r.unsubmitted())

		var got []uint64
		r.reap(func(c ioCQE) {
			assert.EqualValues(t, 0, c.res)
			got = append(got, c.userData)
		})
		want := []uint64{}
		for i := range 5 {
			want = append(want, uint64(round*1000+i))
		}
		require.Equal(t, want, got, "round %d", round)
	}
}

func TestURingPrepareRefusesWhenTheQueueIsFull(t *testing.T) {
	r := newTestURing(t, 4)
	for i := range 4 {
		require.True(t, r.prepare(func(s *ioSQE) { s.opcode = ioringOpNop; s.userData = uint64(i) }))
	}
	assert.False(t, r.prepare(func(s *ioSQE) { s.opcode = ioringOpNop }))

	n, err := r.enter(4, 4, ioringEnterGetEvents)
	require.NoError(t, err)
	require.Equal(t, 4, n)
	assert.Equal(t, 4, r.reap(func(ioCQE) {}))
	assert.True(t, r.prepare(func(s *ioSQE) { s.opcode = ioringOpNop }), "slots are free again once consumed")
}

// The queue transport wakes its waiting thread with a poll on an eventfd;
// this is that mechanism on its own.
func TestURingPollOnAnEventfdCompletesOnlyOnceItIsWritten(t *testing.T) {
	r := newTestURing(t, 4)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(efd) })

	require.True(t, r.prepare(func(s *ioSQE) {
		s.opcode = ioringOpPollAdd
		s.fd = int32(efd)
		s.opFlags = unix.POLLIN
		s.userData = 77
	}))
	n, err := r.enter(1, 0, 0)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	assert.Equal(t, 0, r.reap(func(ioCQE) {}), "nothing completes before the eventfd is written")

	_, err = unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	require.NoError(t, err)
	_, err = r.enter(0, 1, ioringEnterGetEvents)
	require.NoError(t, err)
	var got []ioCQE
	r.reap(func(c ioCQE) { got = append(got, c) })
	require.Len(t, got, 1)
	assert.EqualValues(t, 77, got[0].userData)
	assert.NotZero(t, got[0].res&unix.POLLIN)
}
