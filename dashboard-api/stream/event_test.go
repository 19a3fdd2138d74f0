package stream

import (
	"math"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// TestEventSize: the replay ring holds DefaultReplaySize events; a field
// added to event costs that many times its size (see TestReplayMemoryPerEvent).
// A reading of 3 metrics, the common shape, is one object of the 192-byte
// size class (it was a 160-byte event and a 96-byte array of values, then
// 208 bytes), a status event one of 96.
func TestEventSize(t *testing.T) {
	require.LessOrEqual(t, unsafe.Sizeof(event{}), uintptr(96))
	require.LessOrEqual(t, unsafe.Sizeof(withValues[[3]telemetry.Value]{}), uintptr(192))
}

// TestEventTime: ts is the time as RFC 3339 in UTC, nanoseconds kept,
// whatever the time's zone, and for times that int64 Unix nanoseconds
// cannot hold too.
func TestEventTime(t *testing.T) {
	for _, tm := range []time.Time{
		time.UnixMilli(1764121200123),
		time.Now(), // monotonic reading, local zone
		time.Date(2025, 11, 26, 3, 4, 5, 123456789, time.FixedZone("X", 5*3600+1800)),
		time.Unix(0, 0),
		time.Unix(0, math.MinInt64),
		time.Unix(0, math.MaxInt64),
		{}, // the zero time
		time.Date(1500, 1, 2, 3, 4, 5, 6, time.UTC),
		time.Date(3000, 1, 2, 3, 4, 5, 6, time.FixedZone("Y", -3600)),
	} {
		want := `"ts":"` + tm.UTC().Format(time.RFC3339Nano) + `"`
		r := &event{seq: 1}
		r.setReading("tc-1", tm, []telemetry.Value{num("flow", 1)})
		require.Contains(t, string(r.encoded()), want, "reading")
		s := statusEvent(telemetry.StatusEvent{DeviceID: "tc-1", Status: "online", Previous: "offline", Time: tm})
		require.Contains(t, string(s.encoded()), want, "status")
		require.True(t, r.merged(&event{kind: kindReading, values: []telemetry.Value{num("speed", 2)}}).time().Equal(tm),
			"merged keeps the time")
	}
}

// TestEncodedLazily: the fan-out encodes nothing; an event is encoded when
// a writer sends it, live or in a replay, and one that no client gets
// never is.
func TestEncodedLazily(t *testing.T) {
	h := newTestHub(t, nil)
	encoded := func(seq uint64) bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		e := ringAt(h, seq)
		require.Equal(t, seq, e.seq)
		return e.raw.Load() != nil
	}
	fanned := func() bool { return fannedOut(h) == h.Seq() }

	// No client: nothing is encoded.
	h.Consume([]telemetry.Reading{reading("tc-1", 1, num("flow", 1)), reading("tc-2", 2, num("flow", 2))})
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "online", Time: time.UnixMilli(3)})
	require.Eventually(t, fanned, 10*time.Second, time.Millisecond)
	for seq := uint64(101); seq <= 103; seq++ {
		require.False(t, encoded(seq), "seq %d", seq)
	}

	// A client that gets status events only: its writer encodes them,
	// the readings stay as they are.
	conns := connectDiscard(t, h, 1, `{"type":"subscribe","events":["status"]}`)
	h.Consume([]telemetry.Reading{reading("tc-1", 4, num("flow", 4))})
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "stale", Previous: "online", Time: time.UnixMilli(5)})
	require.Eventually(t, func() bool { return conns[0].lastSeq.Load() == 105 }, 10*time.Second, time.Millisecond)
	require.False(t, encoded(104), "a reading no client gets")
	require.True(t, encoded(105), "the status the client got")

	// A resume replays the readings from the ring: encoded then.
	resumed := connectDiscard(t, h, 1, `{"type":"resume","after":100,"events":["reading"]}`)
	require.Eventually(t, func() bool { return resumed[0].lastSeq.Load() == 104 }, 10*time.Second, time.Millisecond)
	require.Equal(t, int64(3), resumed[0].events.Load())
	for _, seq := range []uint64{101, 102, 104} {
		require.True(t, encoded(seq), "seq %d", seq)
	}
	require.False(t, encoded(103), "the status before any client connected")
}

// TestWritersShareEncodings: clients of different groups (and both
// forms) get the same events from concurrent writers, which encode each
// event once; -race checks the sharing. Readings coalesced away for every
// client are never encoded.
func TestWritersShareEncodings(t *testing.T) {
	// A flush per batch, every client served each time: most readings
	// reach the writers.
	h := newTestHub(t, func(o *Options) { o.FlushInterval = time.Millisecond; o.MaxSendRate = math.MaxInt32 })
	var conns []*discardConn
	for _, sub := range []string{
		`{"type":"subscribe"}`,
		`{"type":"subscribe","batch":true}`,
		`{"type":"subscribe","events":["reading"]}`,
		`{"type":"subscribe","domains":["roads"],"batch":true}`,
	} {
		conns = append(conns, connectDiscard(t, h, 5, sub)...)
	}
	ids := []string{"tc-1", "tc-2"}
	for i := range 50 {
		var rds []telemetry.Reading
		for j := range 20 {
			rds = append(rds, reading(ids[j%2], int64(i*20+j), num("flow", float64(j)), num("speed", float64(i))))
		}
		h.Consume(rds)
		require.Eventually(t, func() bool { return fannedOut(h) == h.Seq() }, 10*time.Second, 100*time.Microsecond)
	}
	want := h.Seq()
	require.Eventually(t, func() bool {
		for _, c := range conns {
			if c.lastSeq.Load() != want {
				return false
			}
		}
		return true
	}, 30*time.Second, time.Millisecond)
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for s := want - 999; s <= want; s++ {
		if e := ringAt(h, s); e.raw.Load() != nil {
			require.Equal(t, e.encode(nil), e.encoded())
			n++
		}
	}
	require.True(t, ringAt(h, want).raw.Load() != nil, "the newest reading was sent")
	t.Logf("%d of 1000 readings encoded", n)
}

// TestEncodeStatus: a status event's message is the same, byte for byte,
// whether its statuses are held as codes or, for a string without one,
// whole in x; the known statuses need no x.
func TestEncodeStatus(t *testing.T) {
	known := []string{telemetry.StatusOnline, telemetry.StatusStale, telemetry.StatusOffline, telemetry.StatusUnknown, ""}
	other := []string{"maintenance", "Online", "on\"line\n", "x\xffy"}
	quoted := map[string]string{
		"online": `"online"`, "stale": `"stale"`, "offline": `"offline"`, "unknown": `"unknown"`, "": `""`,
		"maintenance": `"maintenance"`, "Online": `"Online"`, "on\"line\n": `"on\"line\u000a"`, "x\xffy": `"x` + "\uFFFD" + `y"`,
	}
	tm := time.Date(2025, 11, 26, 1, 40, 0, 123456789, time.UTC)
	for _, status := range append(known, other...) {
		for _, previous := range append(known, other...) {
			e := numbered(42, statusEvent(telemetry.StatusEvent{DeviceID: "rt-1", Status: status, Previous: previous, Time: tm}))
			want := `{"type":"status","seq":42,"device_id":"rt-1","status":` + quoted[status] +
				`,"previous":` + quoted[previous] + `,"ts":"2025-11-26T01:40:00.123456789Z"}`
			require.Equal(t, want, string(e.encoded()), "status %q, previous %q", status, previous)
			codes := statusCodeOf(status) != statusOther && statusCodeOf(previous) != statusOther
			require.Equal(t, codes, e.x == nil, "status %q, previous %q: x only for a string without a code", status, previous)
		}
	}

	// A time that ts cannot hold goes to x; the codes stay.
	big := time.Date(3000, 1, 2, 3, 4, 5, 6, time.UTC)
	e := numbered(43, statusEvent(telemetry.StatusEvent{DeviceID: "rt-1", Status: "stale", Previous: "online", Time: big}))
	require.NotNil(t, e.x)
	require.Equal(t, `{"type":"status","seq":43,"device_id":"rt-1","status":"stale","previous":"online","ts":"3000-01-02T03:04:05.000000006Z"}`,
		string(e.encoded()))
}

// TestEncodedConcurrently: writers racing to encode one event all get the
// same message, and it stays the event's.
func TestEncodedConcurrently(t *testing.T) {
	e, vals := newReading(3)
	copy(vals, []telemetry.Value{{Name: "flow", Num: 1}, {Name: "speed", Num: 2.5}, {Name: "ice", Bool: true, IsBool: true}})
	e.setReading("tc-1", time.UnixMilli(1), vals)
	e.seq = 7
	want := e.encode(nil)
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		wg.Go(func() { got[i] = e.encoded() })
	}
	wg.Wait()
	for i := range got {
		require.Equal(t, want, got[i])
		require.Same(t, unsafe.SliceData(got[0]), unsafe.SliceData(got[i]), "one copy kept")
	}
	require.Equal(t, want, e.encoded())
}
