package alerts

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// arrival is a reading and the wall time it reaches the engine.
type arrival struct {
	r  telemetry.Reading
	at time.Time
}

// shuffled delays each reading by a random jitter below maxJitter and
// returns them in arrival order: a stream out of order by less than
// maxJitter, as QoS 1 retries and parallel workers produce it.
func shuffled(rs []telemetry.Reading, maxJitter time.Duration, seed uint64) []arrival {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]arrival, len(rs))
	for i, r := range rs {
		out[i] = arrival{r: r, at: r.Time.Add(time.Duration(rng.Int64N(int64(maxJitter))))}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}

// runEngine feeds arrivals to an engine with the given reorder window, in
// batches of batch messages, and returns the alert intervals it raised, in
// the shape Backtest returns. No Tick runs during the stream (so every
// transition is decided by a reading, as in Backtest); one final Tick a
// window after the last arrival releases what is still held.
func runEngine(t *testing.T, rule Rule, window time.Duration, arrivals []arrival, batch int) []Interval {
	t.Helper()
	clk := &clock{t: arrivals[0].at}
	reg := newRegistry(dev("d1", "north"), dev("d2", "north"))
	e, err := NewEngine(context.Background(), Options{
		Lookup: reg.lookup, Now: clk.now, Registerer: prometheus.NewRegistry(),
		ReorderWindow: window, FoldWait: -1,
	})
	require.NoError(t, err)
	rule.Enabled = true
	_, err = e.CreateRule(context.Background(), rule)
	require.NoError(t, err)
	events, stop := e.Subscribe(10000)
	for i := 0; i < len(arrivals); i += batch {
		end := min(i+batch, len(arrivals))
		var rs []telemetry.Reading
		for _, a := range arrivals[i:end] {
			r := a.r
			r.Values = append([]telemetry.Value(nil), r.Values...)
			rs = append(rs, r)
		}
		clk.set(arrivals[end-1].at)
		e.Consume(rs)
		// Ingest reuses the slices: the engine must have copied them.
		for k := range rs {
			for v := range rs[k].Values {
				rs[k].Values[v] = telemetry.Value{Name: "garbage", Num: -1e9}
			}
		}
	}
	last := arrivals[len(arrivals)-1].at
	clk.set(last.Add(window))
	e.Tick(last.Add(window))
	stop()

	var out []Interval
	open := map[string]int{}
	for ev := range events {
		a := ev.Alert
		switch ev.Transition {
		case TransitionFiring:
			out = append(out, Interval{DeviceID: a.DeviceID, Start: a.FiredAt, Since: a.StartsAt})
			open[a.DeviceID] = len(out) - 1
		case TransitionResolved:
			if i, ok := open[a.DeviceID]; ok {
				out[i].End = *a.ResolvedAt
				delete(open, a.DeviceID)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].DeviceID != out[j].DeviceID {
			return out[i].DeviceID < out[j].DeviceID
		}
		return out[i].Start.Before(out[j].Start)
	})
	return out
}

// withoutValues drops Interval.Value, which Backtest takes from the reading
// before a timer while the engine takes it from the reading that fired.
func withoutValues(in []Interval) []Interval {
	out := append([]Interval(nil), in...)
	for i := range out {
		out[i].Value = 0
	}
	return out
}

// TestReorderWindowMatchesSortedStream: readings shuffled within 2s give
// the alert intervals Backtest gives for the sorted stream, for every rule
// kind whose outcome depends on order; without the window they do not.
func TestReorderWindowMatchesSortedStream(t *testing.T) {
	const window = 2 * time.Second
	// Two devices, one reading a second for 10 minutes, a value that
	// wanders across the thresholds: many fire/resolve cycles, blips
	// shorter than `for`, and steep changes for the rate rule.
	var sorted []telemetry.Reading
	rng := rand.New(rand.NewPCG(7, 11))
	for _, d := range []string{"d1", "d2"} {
		v := 50.0
		for i := 0; i < 600; i++ {
			v += rng.NormFloat64() * 8
			v = max(0, min(100, v))
			if i > 590 {
				v = 0 // end healthy, so no alert is left pending
			}
			sorted = append(sorted, reading(d, at(time.Duration(i)*time.Second), "x", v))
		}
	}
	rules := []Rule{
		{Name: "threshold", Kind: KindThreshold, Metric: "x", Op: ">", Value: 70, ClearValue: ptr(60)},
		{Name: "threshold for", Kind: KindThreshold, Metric: "x", Op: ">", Value: 60, For: Duration(3 * time.Second)},
		{Name: "below", Kind: KindThreshold, Metric: "x", Op: "<", Value: 30},
		{Name: "rate", Kind: KindRate, Metric: "x", Op: ">", Value: 600}, // +10 in one second
	}
	for _, rule := range rules {
		want, err := Backtest(rule, sorted)
		require.NoError(t, err)
		require.NotEmpty(t, want, "%s: the scenario must raise alerts", rule.Name)
		want = withoutValues(want)
		for _, seed := range []uint64{1, 2, 3} {
			for _, batch := range []int{1, 7} {
				stream := shuffled(sorted, window-time.Millisecond, seed)
				got := runEngine(t, rule, window, stream, batch)
				require.Equal(t, want, got, "%s, seed %d, batch %d", rule.Name, seed, batch)
			}
		}
		// The same data in order, without a window: the baseline agrees.
		inOrder := make([]arrival, len(sorted))
		for i, r := range sorted {
			inOrder[i] = arrival{r: r, at: r.Time}
		}
		sort.SliceStable(inOrder, func(i, j int) bool { return inOrder[i].at.Before(inOrder[j].at) })
		require.Equal(t, want, runEngine(t, rule, 0, inOrder, 1), "%s: ordered, no window", rule.Name)
	}
	// The window is what makes the difference: shuffled without it, the
	// rate rule (which needs consecutive readings) gives another answer.
	want, err := Backtest(rules[3], sorted)
	require.NoError(t, err)
	require.NotEqual(t, withoutValues(want), runEngine(t, rules[3], 0, shuffled(sorted, window-time.Millisecond, 1), 1))
}

// TestReorderWindowReleasesQuietDevice: a device's last readings are
// evaluated once it has been quiet for the window (Tick), not held forever,
// and timers run the window behind so they do not overtake held readings.
func TestReorderWindowReleasesQuietDevice(t *testing.T) {
	clk := &clock{t: t0}
	reg := newRegistry(dev("d1", "north"))
	e, err := NewEngine(context.Background(), Options{
		Lookup: reg.lookup, Now: clk.now, Registerer: prometheus.NewRegistry(), ReorderWindow: 2 * time.Second,
	})
	require.NoError(t, err)
	_, err = e.CreateRule(context.Background(), Rule{Name: "hot", Enabled: true, Kind: KindThreshold, Metric: "x", Op: ">", Value: 10, For: Duration(time.Second)})
	require.NoError(t, err)

	// Bad at 0s, then the clearing reading at 1s arrives before the bad one
	// at 0.5s. Sorted: bad, bad, good: pending then dropped, never firing.
	e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 20)})
	clk.set(at(1100 * time.Millisecond))
	e.Consume([]telemetry.Reading{reading("d1", at(time.Second), "x", 0)})
	e.Consume([]telemetry.Reading{reading("d1", at(500*time.Millisecond), "x", 20)})
	require.Zero(t, e.ActiveCount("d1"))
	e.Tick(at(2 * time.Second)) // `for` would be due at 1s; the clock is 2s behind
	require.Zero(t, e.ActiveCount("d1"))
	require.Len(t, e.held["d1"].pending(), 3, "still held: the device spoke 0.9s ago")
	e.Tick(at(3200 * time.Millisecond))
	require.Empty(t, e.held, "released after 2s of quiet")
	require.Zero(t, e.ActiveCount("d1"))
	require.Empty(t, e.ListAlerts(AlertFilter{}))
}

func TestReorderWindowNegativeRefused(t *testing.T) {
	_, err := NewEngine(context.Background(), Options{
		Lookup: newRegistry().lookup, Registerer: prometheus.NewRegistry(), ReorderWindow: -time.Second,
	})
	require.ErrorContains(t, err, "reorder_window")
}

// BenchmarkConsumeOrdered: the reorder window on (as serve runs it), 100
// devices publishing in turn 1 ms apart, the bench's three rules (a
// threshold with a hold time, a rate and an absence rule) selecting every
// device: each reading is held, then evaluated once 2 s newer ones arrive.
func BenchmarkConsumeOrdered(b *testing.B) {
	const nDevices = 100
	devs := make([]*telemetry.Device, nDevices)
	ids := make([]string, nDevices)
	for i := range devs {
		ids[i] = fmt.Sprintf("dev%03d", i)
		devs[i] = &telemetry.Device{ID: ids[i], Profile: &telemetry.Profile{Type: "counter", Site: "s1", Domain: "roads", Lifecycle: telemetry.LifecycleActive}}
	}
	reg := newRegistry(devs...)
	e, err := NewEngine(b.Context(), Options{Lookup: reg.lookup, Registerer: prometheus.NewRegistry(), ReorderWindow: 2 * time.Second})
	require.NoError(b, err)
	sel := Selector{Type: "counter", Site: "s1"}
	for _, r := range []Rule{
		{Name: "flow", Enabled: true, Selector: sel, Kind: KindThreshold, Metric: "flow", Op: ">", Value: 5000, For: Duration(30 * time.Second)},
		{Name: "speed", Enabled: true, Selector: sel, Kind: KindRate, Metric: "speed", Value: 1e12},
		{Name: "silent", Enabled: true, Selector: sel, Kind: KindAbsence, For: Duration(time.Hour)},
	} {
		_, err := e.CreateRule(b.Context(), r)
		require.NoError(b, err)
	}
	batch := make([]telemetry.Reading, 1)
	vals := []telemetry.Value{{Name: "flow", Num: 1000}, {Name: "speed", Num: 50}, {Name: "count", Num: 3}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		vals[1].Num = float64(40 + i%400)
		batch[0] = telemetry.Reading{DeviceID: ids[i%nDevices], Time: at(time.Duration(i) * time.Millisecond), Values: vals}
		e.Consume(batch)
	}
}
