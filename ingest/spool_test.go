package ingest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSpoolAppendReadCommit(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpool(dir, MinSpoolMaxBytes)
	require.NoError(t, err)
	s.segMax = 200 // several segments
	for i := range 20 {
		require.NoError(t, s.append(fmt.Appendf(nil, "m v=%d %d\n", i, i), 1, 1))
	}
	_, msgs, pts := s.stats()
	require.Equal(t, 20, msgs)
	require.Equal(t, 20, pts)

	// Replay the first part, then "crash" (no close) and reopen.
	var got []byte
	for range 2 {
		r, ok, err := s.read(3)
		require.NoError(t, err)
		require.True(t, ok)
		got = append(got, r.lines...)
		require.NoError(t, s.commit(r))
	}
	s2, err := openSpool(dir, MinSpoolMaxBytes)
	require.NoError(t, err)
	_, msgs, _ = s2.stats()
	require.Equal(t, 20-countLines(got), msgs, "the index survives a restart")
	for {
		r, ok, err := s2.read(3)
		require.NoError(t, err)
		if !ok {
			break
		}
		got = append(got, r.lines...)
		require.NoError(t, s2.commit(r))
	}
	var want []byte
	for i := range 20 {
		want = fmt.Appendf(want, "m v=%d %d\n", i, i)
	}
	require.Equal(t, string(want), string(got), "in order, each once")
	require.True(t, s2.empty())
	b, _, _ := s2.stats()
	require.Zero(t, b)
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.lp"))
	require.Len(t, segs, 1, "replayed segments are removed")
}

func countLines(b []byte) (n int) {
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

func TestSpoolTornRecordCutOff(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpool(dir, MinSpoolMaxBytes)
	require.NoError(t, err)
	require.NoError(t, s.append([]byte("m v=1 1\n"), 1, 1))
	require.NoError(t, s.append([]byte("m v=2 2\n"), 1, 1))
	seg := filepath.Join(dir, segName(s.segs[0].seq))
	// A crash in the middle of the third append.
	f, err := os.OpenFile(seg, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.Write([]byte{20, 0, 0, 0, 1, 0, 0, 0, 1, 0})
	require.NoError(t, err)
	f.Close()

	s2, err := openSpool(dir, MinSpoolMaxBytes)
	require.NoError(t, err)
	_, msgs, _ := s2.stats()
	require.Equal(t, 2, msgs)
	require.Zero(t, s2.discardedMsgs, "a torn tail was never acknowledged: not a loss")
	r, ok, err := s2.read(100)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "m v=1 1\nm v=2 2\n", string(r.lines))
	require.NoError(t, s2.append([]byte("m v=3 3\n"), 1, 1), "appends go on after recovery")
}

func TestSpoolFull(t *testing.T) {
	s, err := openSpool(t.TempDir(), MinSpoolMaxBytes)
	require.NoError(t, err)
	big := make([]byte, MinSpoolMaxBytes/2)
	require.NoError(t, s.append(big, 1, 1))
	require.ErrorIs(t, s.append(big, 1, 1), ErrSpoolFull)
	r, ok, err := s.read(10)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, s.commit(r))
	require.NoError(t, s.append(big, 1, 1), "room again once replayed")
}

func TestDeadStoreBoundsAndReplaySelection(t *testing.T) {
	s := newDeadStore(3, 1<<20)
	for i := range 5 {
		s.add(deadLetter{DeadLetter: DeadLetter{Reason: ReasonUnknownDevice, DeviceID: fmt.Sprint("d", i)}, payload: []byte("{}")}, uint64(i), true)
	}
	l := s.list(DeadLetterFilter{})
	require.Len(t, l, 3, "bounded by count")
	require.Equal(t, uint64(5), l[0].ID, "newest first")
	require.Equal(t, "{}", l[0].Payload)

	// Two dead letters of one message replay it once.
	s.add(deadLetter{DeadLetter: DeadLetter{Reason: ReasonBadValue, DeviceID: "g1"}, payload: []byte("x")}, 99, true)
	s.add(deadLetter{DeadLetter: DeadLetter{Reason: ReasonBadMetric, DeviceID: "g1"}, payload: []byte("x")}, 99, true)
	rep, res := s.take(ReplaySelector{IDs: []uint64{6, 7, 42}})
	require.Len(t, rep, 1)
	require.Equal(t, []uint64{42}, res.NotFound)
	require.Equal(t, 1, s.len())

	// Bounded by bytes: a big entry evicts the rest.
	b := newDeadStore(100, 4096)
	b.add(deadLetter{payload: make([]byte, 1000)}, 1, true)
	b.add(deadLetter{payload: make([]byte, 3000)}, 2, true)
	require.Equal(t, 1, b.len())
	require.LessOrEqual(t, b.bytes, 4096)
}
