package devices

import (
	"math"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// How Live lays out its state to save memory: times as int64 nanoseconds,
// bools folded into the number, the index of entries, the sizes.

// TestLiveReadingTimes: Get reports a reading's time as the same instant in
// UTC, whatever zone it came in, and clamps what int64 nanoseconds cannot
// hold.
func TestLiveReadingTimes(t *testing.T) {
	parse := func(s string) time.Time {
		ts, err := time.Parse(time.RFC3339Nano, s)
		require.NoError(t, err)
		return ts
	}
	instant := time.Date(2025, 11, 26, 1, 40, 0, 123456789, time.UTC)
	for _, tc := range []struct {
		name   string
		ts     time.Time
		want   time.Time
		wantTS string // as the API's JSON shows it
	}{
		{"arrival (time.Now)", time.Now(), time.Time{}, ""},
		{"unix ms", time.UnixMilli(1764121200123), time.UnixMilli(1764121200123).UTC(), "2025-11-26T01:40:00.123Z"},
		{"rfc3339 Z", parse("2025-11-26T01:40:00.123456789Z"), instant, "2025-11-26T01:40:00.123456789Z"},
		{"rfc3339 +02:00", parse("2025-11-26T03:40:00.123456789+02:00"), instant, "2025-11-26T01:40:00.123456789Z"},
		{"rfc3339 -03:30", parse("2025-11-25T22:10:00.123456789-03:30"), instant, "2025-11-26T01:40:00.123456789Z"},
		{"named zone", instant.In(time.FixedZone("CET", 3600)), instant, "2025-11-26T01:40:00.123456789Z"},
		{"negative unix", time.Unix(-1, 5), time.Unix(-1, 5).UTC(), "1969-12-31T23:59:59.000000005Z"},
		{"first representable", time.Unix(0, math.MinInt64), time.Unix(0, math.MinInt64).UTC(), "1677-09-21T00:12:43.145224192Z"},
		{"last representable", time.Unix(0, math.MaxInt64), time.Unix(0, math.MaxInt64).UTC(), "2262-04-11T23:47:16.854775807Z"},
		{"before 1678: clamped", time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, math.MinInt64).UTC(), "1677-09-21T00:12:43.145224192Z"},
		{"zero time: clamped", time.Time{}, time.Unix(0, math.MinInt64).UTC(), "1677-09-21T00:12:43.145224192Z"},
		{"after 2262: clamped", time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, math.MaxInt64).UTC(), "2262-04-11T23:47:16.854775807Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want.IsZero() {
				tc.want = tc.ts.UTC()
				tc.wantTS = tc.want.Format(time.RFC3339Nano)
			}
			live := NewLive(LiveOptions{Now: func() time.Time { return t0 }})
			live.Consume([]telemetry.Reading{reading("d", tc.ts, num("x", 1))})
			st, ok := live.Get("d")
			require.True(t, ok)
			got := st.Metrics["x"].Time
			assert.Equal(t, tc.want, got, "same instant, UTC, no monotonic reading")
			assert.Equal(t, time.UTC, got.Location())
			assert.Equal(t, tc.wantTS, got.Format(time.RFC3339Nano))
		})
	}
}

// TestLiveNewestAcrossZones: "newest" compares instants, not wall clocks
// in their zones.
func TestLiveNewestAcrossZones(t *testing.T) {
	live := NewLive(LiveOptions{Now: func() time.Time { return t0 }})
	plus2 := time.FixedZone("", 2*3600)
	live.Consume([]telemetry.Reading{reading("d", t0.In(plus2), num("x", 1))})
	// Later on the +02:00 wall clock, earlier as an instant.
	live.Consume([]telemetry.Reading{reading("d", t0.Add(-time.Nanosecond), num("x", 2))})
	st, _ := live.Get("d")
	assert.Equal(t, MetricValue{Value: 1.0, Time: t0}, st.Metrics["x"])
	live.Consume([]telemetry.Reading{reading("d", t0.Add(time.Nanosecond).In(plus2), num("x", 3))})
	st, _ = live.Get("d")
	assert.Equal(t, MetricValue{Value: 3.0, Time: t0.Add(time.Nanosecond)}, st.Metrics["x"])
}

// TestLiveBoolsAndNumbers: a metric may switch between bool and number, and
// no number, NaN included, is taken for a bool.
func TestLiveBoolsAndNumbers(t *testing.T) {
	live := NewLive(LiveOptions{Now: func() time.Time { return t0 }})
	for i, v := range []telemetry.Value{
		{Name: "x", IsBool: true, Bool: true},
		{Name: "x", IsBool: true},
		num("x", 0),
		num("x", 1),
		{Name: "x", IsBool: true, Bool: true},
		num("x", math.Inf(-1)),
		num("x", math.Copysign(0, -1)),
	} {
		live.Consume([]telemetry.Reading{reading("d", t0, v)})
		st, _ := live.Get("d")
		if v.IsBool {
			assert.Equal(t, v.Bool, st.Metrics["x"].Value, "step %d", i)
		} else {
			got, ok := st.Metrics["x"].Value.(float64)
			require.True(t, ok, "step %d: a float64", i)
			assert.Equal(t, math.Float64bits(v.Num), math.Float64bits(got), "step %d: the same bits", i)
		}
	}
	// Ingest rejects NaN, but a NaN from elsewhere stays a number.
	live.Consume([]telemetry.Reading{reading("d", t0, num("x", math.NaN()))})
	st, _ := live.Get("d")
	got, ok := st.Metrics["x"].Value.(float64)
	require.True(t, ok)
	assert.True(t, math.IsNaN(got))
}

// withMono returns t (which has a monotonic reading) with its monotonic
// reading moved by d and its wall clock unchanged, as after a step of the
// wall clock; the time package offers no way to make one.
func withMono(t *testing.T, ts time.Time, d time.Duration) time.Time {
	t.Helper()
	type timeLayout struct {
		wall uint64
		ext  int64
		loc  *time.Location
	}
	require.Equal(t, unsafe.Sizeof(timeLayout{}), unsafe.Sizeof(ts))
	out := ts
	(*timeLayout)(unsafe.Pointer(&out)).ext += int64(d)
	if out.Sub(ts) != d || out.Round(0) != ts.Round(0) || out == out.Round(0) {
		t.Skip("time.Time's layout changed: cannot fake a wall-clock step")
	}
	return out
}

// TestLiveSweepThresholdsExact: quiet time is measured to the nanosecond,
// on the monotonic clock when the clock has one (a step of the wall clock
// does not count), else on the wall clock (a test's fake clock).
func TestLiveSweepThresholdsExact(t *testing.T) {
	base := time.Now()
	for _, tc := range []struct {
		name       string
		seen, from time.Time // last seen; the sweeps are at from + threshold
	}{
		{"arrival (monotonic)", base, base},
		{"fake clock (no monotonic reading)", t0, t0},
		// Last seen an hour ahead on the wall clock, which was then set
		// back: the quiet time is on the monotonic clock.
		{"wall clock stepped back", withMono(t, base.Add(time.Hour), -time.Hour), base},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newLiveFixture(t, "d1")
			f.now = tc.seen
			f.live.Consume([]telemetry.Reading{reading("d1", tc.seen, num("x", 1))})
			for _, s := range []struct {
				at   time.Duration
				want string
			}{
				{StaleAfter*time.Minute - 1, telemetry.StatusOnline},
				{StaleAfter * time.Minute, telemetry.StatusStale},
				{OfflineAfter*time.Minute - 1, telemetry.StatusStale},
				{OfflineAfter * time.Minute, telemetry.StatusOffline},
			} {
				f.live.Sweep(tc.from.Add(s.at))
				st, _ := f.live.Get("d1")
				assert.Equal(t, s.want, st.Status, "after %v", s.at)
			}
		})
	}
}

// TestLiveLastSeen: last seen only moves forward, and Get reports it in
// UTC: exactly the fake clock's time, or time.Now's to within the drift of
// the wall clock from the monotonic one since start-up.
func TestLiveLastSeen(t *testing.T) {
	f := newLiveFixture(t, "d1")
	f.now = t0.Add(time.Minute)
	f.live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 1))})
	f.live.DeviceStatus("d1", true, t0) // arrived earlier, handled later
	f.now = t0
	f.live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 1))})
	st, _ := f.live.Get("d1")
	require.NotNil(t, st.LastSeen)
	assert.Equal(t, t0.Add(time.Minute), *st.LastSeen)
	f.live.DeviceStatus("d1", true, t0.Add(2*time.Minute))
	st, _ = f.live.Get("d1")
	assert.Equal(t, t0.Add(2*time.Minute), *st.LastSeen)
	f.live.DeviceStatus("d1", false, t0.Add(3*time.Minute))
	st, _ = f.live.Get("d1")
	assert.Equal(t, t0.Add(2*time.Minute), *st.LastSeen, "an offline message is not hearing from the device")

	live := NewLive(LiveOptions{})
	now := time.Now()
	live.Consume([]telemetry.Reading{reading("d", now, num("x", 1))})
	st, _ = live.Get("d")
	require.NotNil(t, st.LastSeen)
	assert.Equal(t, time.UTC, st.LastSeen.Location())
	assert.WithinDuration(t, now, *st.LastSeen, time.Second)
}

// TestLiveSizes guards the per-device memory: 16 bytes per metric, an entry
// of 48 bytes in its slot's array.
func TestLiveSizes(t *testing.T) {
	assert.EqualValues(t, 16, unsafe.Sizeof(metricVal{}))
	assert.EqualValues(t, 48, unsafe.Sizeof(entry{}))
}

func TestLiveSlots(t *testing.T) {
	var x liveSlots
	assert.Nil(t, x.at(5, false), "no chunk yet")
	calls := 0
	x.all(func(uint32, *entry) bool { calls++; return true })
	assert.Zero(t, calls)

	far := x.at(3*slotChunk+7, true) // a chunk past missing ones
	require.NotNil(t, far)
	assert.Same(t, far, x.at(3*slotChunk+7, false))
	assert.Same(t, far, x.at(3*slotChunk+7, true), "allocated once")
	assert.Nil(t, x.at(7, false), "the chunks before it stay missing")
	first := x.at(7, true)
	assert.Same(t, far, x.at(3*slotChunk+7, false), "adding a chunk moves no entry")
	assert.NotSame(t, first, far)

	var slots []uint32
	x.all(func(slot uint32, e *entry) bool {
		if e == first || e == far {
			slots = append(slots, slot)
		}
		return true
	})
	assert.Equal(t, []uint32{7, 3*slotChunk + 7}, slots, "all yields every entry with its slot")
	calls = 0
	x.all(func(uint32, *entry) bool { calls++; return false })
	assert.Equal(t, 1, calls, "all stops when yield returns false")
}

// TestLiveSlotsConcurrent: lock-free readers always find the entries of
// existing chunks while writers add others.
func TestLiveSlotsConcurrent(t *testing.T) {
	var x liveSlots
	const n = 64 * slotChunk
	stable := x.at(0, true)
	var writers, readers sync.WaitGroup
	for w := range 2 {
		writers.Go(func() {
			for i := w; i < n; i += 2 {
				x.at(uint32(i), true).mu.Lock()
				x.at(uint32(i), false).mu.Unlock()
			}
		})
	}
	stop := make(chan struct{})
	readers.Go(func() {
		for {
			if x.at(0, false) != stable {
				t.Error("entry 0 moved during writes")
				return
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	})
	writers.Wait()
	close(stop)
	readers.Wait()
	count := 0
	x.all(func(uint32, *entry) bool { count++; return true })
	assert.Equal(t, n, count)
}

// TestLiveNameSets: devices reporting the same metrics share one name set,
// a new metric moves a device to another set with its values kept, sets
// leave with their last device, and a device cannot make Live hold more
// than maxMetrics values.
func TestLiveNameSets(t *testing.T) {
	live := NewLive(LiveOptions{Now: func() time.Time { return t0 }})
	entryOf := func(id string) *entry {
		t.Helper()
		dev, ok := live.lookup(id)
		require.True(t, ok)
		return live.slots.at(dev.Slot, false)
	}
	live.Consume([]telemetry.Reading{
		reading("a", t0, num("speed", 1), num("flow", 2)),
		reading("b", t0, num("flow", 3), num("speed", 4)),
	})
	require.NotNil(t, entryOf("a").names)
	assert.Same(t, entryOf("a").names, entryOf("b").names, "same metrics, one set")
	assert.Len(t, live.sets.m, 1)

	live.Consume([]telemetry.Reading{reading("b", t0.Add(time.Second), num("occupancy", 0.5))})
	assert.NotSame(t, entryOf("a").names, entryOf("b").names)
	assert.Len(t, live.sets.m, 2)
	st, _ := live.Get("b")
	assert.Equal(t, map[string]MetricValue{
		"flow":      {Value: 3.0, Time: t0},
		"speed":     {Value: 4.0, Time: t0},
		"occupancy": {Value: 0.5, Time: t0.Add(time.Second)},
	}, st.Metrics, "values kept across the move")

	live.Forget("a")
	assert.Len(t, live.sets.m, 1, "a set leaves with its last device")
	live.Forget("b")
	assert.Empty(t, live.sets.m)

	var many []telemetry.Value
	for i := range maxMetrics + 10 {
		many = append(many, num("m"+strconv.Itoa(i), float64(i)))
	}
	live.Consume([]telemetry.Reading{reading("c", t0, many...)})
	st, _ = live.Get("c")
	assert.Len(t, st.Metrics, maxMetrics)
	live.Consume([]telemetry.Reading{reading("c", t0.Add(time.Second), num("m0", -1), num("zzz", 1))})
	st, _ = live.Get("c")
	assert.Len(t, st.Metrics, maxMetrics)
	assert.Equal(t, -1.0, st.Metrics["m0"].Value, "known metrics still update at the limit")
}
