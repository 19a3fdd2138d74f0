package devices

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

var t0 = time.Date(2025, 11, 26, 8, 0, 0, 0, time.UTC)

// liveFixture is a Live over a fixed set of devices (interval 60s), with a
// settable clock and the events it emitted.
type liveFixture struct {
	live   *Live
	now    time.Time
	mu     sync.Mutex
	events []telemetry.StatusEvent
	reg    *prometheus.Registry
}

func newLiveFixture(t *testing.T, ids ...string) *liveFixture {
	t.Helper()
	devs := map[string]*telemetry.Device{}
	for i, id := range ids {
		devs[id] = &telemetry.Device{ID: id, Slot: uint32(i), Profile: &telemetry.Profile{Interval: time.Minute}}
	}
	f := &liveFixture{now: t0, reg: prometheus.NewRegistry()}
	f.live = NewLive(LiveOptions{
		Lookup: func(id string) (*telemetry.Device, bool) { d, ok := devs[id]; return d, ok },
		Now:    func() time.Time { return f.now },
		OnStatus: func(e telemetry.StatusEvent) {
			f.mu.Lock()
			f.events = append(f.events, e)
			f.mu.Unlock()
		},
		Registerer: f.reg,
		Registered: func() int { return len(devs) },
	})
	return f
}

func (f *liveFixture) takeEvents() []telemetry.StatusEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.events
	f.events = nil
	return e
}

func reading(id string, ts time.Time, vals ...telemetry.Value) telemetry.Reading {
	return telemetry.Reading{DeviceID: id, Time: ts, Values: vals}
}

func num(name string, v float64) telemetry.Value { return telemetry.Value{Name: name, Num: v} }

func TestLiveStatusTransitions(t *testing.T) {
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	type step struct {
		at     int    // seconds after t0
		do     string // "reading", "online", "offline", "sweep"
		status string // expected status after the step
		event  string // expected event status, "" for none
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first reading makes online", []step{
			{0, "sweep", telemetry.StatusUnknown, ""},
			{10, "reading", telemetry.StatusOnline, telemetry.StatusOnline},
			{20, "reading", telemetry.StatusOnline, ""},
		}},
		{"stale at exactly 2x, offline at exactly 5x", []step{
			{0, "reading", telemetry.StatusOnline, telemetry.StatusOnline},
			{119, "sweep", telemetry.StatusOnline, ""},
			{120, "sweep", telemetry.StatusStale, telemetry.StatusStale},
			{200, "sweep", telemetry.StatusStale, ""},
			{299, "sweep", telemetry.StatusStale, ""},
			{300, "sweep", telemetry.StatusOffline, telemetry.StatusOffline},
			{900, "sweep", telemetry.StatusOffline, ""},
		}},
		{"online straight to offline when sweeps are sparse", []step{
			{0, "reading", telemetry.StatusOnline, telemetry.StatusOnline},
			{301, "sweep", telemetry.StatusOffline, telemetry.StatusOffline},
		}},
		{"back online on a reading", []step{
			{0, "reading", telemetry.StatusOnline, telemetry.StatusOnline},
			{130, "sweep", telemetry.StatusStale, telemetry.StatusStale},
			{140, "reading", telemetry.StatusOnline, telemetry.StatusOnline},
			{200, "sweep", telemetry.StatusOnline, ""},
			{439, "sweep", telemetry.StatusStale, telemetry.StatusStale},
			{440, "sweep", telemetry.StatusOffline, telemetry.StatusOffline},
			{450, "reading", telemetry.StatusOnline, telemetry.StatusOnline},
		}},
		{"last will makes offline at once", []step{
			{0, "reading", telemetry.StatusOnline, telemetry.StatusOnline},
			{5, "offline", telemetry.StatusOffline, telemetry.StatusOffline},
			{6, "offline", telemetry.StatusOffline, ""},
			{130, "sweep", telemetry.StatusOffline, ""},
			{140, "online", telemetry.StatusOnline, telemetry.StatusOnline},
			{260, "sweep", telemetry.StatusStale, telemetry.StatusStale},
		}},
		{"status message before any reading", []step{
			{0, "online", telemetry.StatusOnline, telemetry.StatusOnline},
			{121, "sweep", telemetry.StatusStale, telemetry.StatusStale},
		}},
		{"offline message on unknown device", []step{
			{0, "offline", telemetry.StatusOffline, telemetry.StatusOffline},
			{1000, "sweep", telemetry.StatusOffline, ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newLiveFixture(t, "d1")
			prev := telemetry.StatusUnknown
			for i, s := range tt.steps {
				f.now = sec(s.at)
				switch s.do {
				case "reading":
					f.live.Consume([]telemetry.Reading{reading("d1", f.now, num("x", 1))})
				case "online":
					f.live.DeviceStatus("d1", true, f.now)
				case "offline":
					f.live.DeviceStatus("d1", false, f.now)
				case "sweep":
					f.live.Sweep(f.now)
				}
				st, ok := f.live.Get("d1")
				require.True(t, ok)
				assert.Equal(t, s.status, st.Status, "step %d (%s at %ds)", i, s.do, s.at)
				events := f.takeEvents()
				if s.event == "" {
					assert.Empty(t, events, "step %d", i)
				} else if assert.Len(t, events, 1, "step %d", i) {
					assert.Equal(t, telemetry.StatusEvent{DeviceID: "d1", Status: s.event, Previous: prev, Time: f.now}, events[0], "step %d", i)
				}
				prev = st.Status
			}
		})
	}
}

func TestLiveLatestValues(t *testing.T) {
	f := newLiveFixture(t, "d1", "d2")
	f.now = t0.Add(time.Hour)
	name := []byte("speed_kmh")
	vals := []telemetry.Value{
		num("flow_vph", 1260),
		{Name: string(name), Num: 54.5},
		{Name: "ice_warning", Bool: true, IsBool: true},
	}
	f.live.Consume([]telemetry.Reading{
		reading("d1", t0.Add(2*time.Minute), vals...),
		// Older than the one held: ignored for "latest".
		reading("d1", t0.Add(1*time.Minute), num("flow_vph", 1), num("occupancy", 0.3)),
		reading("unknown-device", t0, num("flow_vph", 1)),
	})
	// The caller reuses its buffers after Consume returns.
	vals[0].Num = -1
	copy(name, "xxxxxxxxx")

	st, ok := f.live.Get("d1")
	require.True(t, ok)
	assert.Equal(t, telemetry.StatusOnline, st.Status)
	require.NotNil(t, st.LastSeen)
	assert.Equal(t, f.now, *st.LastSeen, "last seen is arrival time")
	assert.Equal(t, map[string]MetricValue{
		"flow_vph":    {Value: 1260.0, Time: t0.Add(2 * time.Minute)},
		"speed_kmh":   {Value: 54.5, Time: t0.Add(2 * time.Minute)},
		"ice_warning": {Value: true, Time: t0.Add(2 * time.Minute)},
		"occupancy":   {Value: 0.3, Time: t0.Add(1 * time.Minute)}, // new metric: kept
	}, st.Metrics)

	// Same timestamp: the later arrival wins.
	f.live.Consume([]telemetry.Reading{reading("d1", t0.Add(2*time.Minute), num("flow_vph", 1300))})
	st, _ = f.live.Get("d1")
	assert.Equal(t, 1300.0, st.Metrics["flow_vph"].Value)

	// Registered but never heard from.
	st, ok = f.live.Get("d2")
	require.True(t, ok)
	assert.Equal(t, State{DeviceID: "d2", Status: telemetry.StatusUnknown, Metrics: map[string]MetricValue{}}, st)
	assert.Nil(t, st.LastSeen)

	_, ok = f.live.Get("unknown-device")
	assert.False(t, ok, "readings of unregistered devices are not kept")

	// Get returns a copy.
	st, _ = f.live.Get("d1")
	st.Metrics["flow_vph"] = MetricValue{Value: 0.0}
	st2, _ := f.live.Get("d1")
	assert.Equal(t, 1300.0, st2.Metrics["flow_vph"].Value)
}

func TestLiveForgetAndGauges(t *testing.T) {
	f := newLiveFixture(t, "d1", "d2", "d3")
	f.live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 1)), reading("d2", t0, num("x", 1))})
	f.live.DeviceStatus("d3", false, t0)
	f.now = t0.Add(150 * time.Second)
	f.live.Consume([]telemetry.Reading{reading("d2", f.now, num("x", 2))})
	f.live.Sweep(f.now) // d1 stale
	f.takeEvents()

	expect := func(online, stale, offline, unknown int) {
		t.Helper()
		assert.Equal(t, map[string]float64{
			"online": float64(online), "stale": float64(stale),
			"offline": float64(offline), "unknown": float64(unknown),
		}, gather(t, f.reg, "infrawatch_devices"))
	}
	expect(1, 1, 1, 0)

	f.live.Forget("d1")
	_, _ = f.live.Get("d1")
	expect(1, 0, 1, 1)  // the fixture's registry still counts d1
	f.live.Forget("d1") // idempotent
	expect(1, 0, 1, 1)
	assert.Empty(t, f.takeEvents(), "forgetting is not a status change")
	assert.Equal(t, map[string]float64{"online": 2, "stale": 1, "offline": 1},
		gather(t, f.reg, "infrawatch_device_status_changes_total"))
}

// liveOnRegistry returns a registry holding device d1 and a Live on it
// that has taken one reading of metric from d1.
func liveOnRegistry(t *testing.T, metric string) (*Registry, *Live) {
	t.Helper()
	reg := newMemRegistry(t)
	_, err := reg.Create(t.Context(), validDevice("d1"))
	require.NoError(t, err)
	live := NewLive(LiveOptions{Lookup: reg.Lookup})
	live.Consume([]telemetry.Reading{reading("d1", t0, num(metric, 1))})
	return reg, live
}

func TestLiveSweepDropsDeletedDevices(t *testing.T) {
	reg, live := liveOnRegistry(t, "x")
	require.NoError(t, reg.Delete(t.Context(), "d1"))

	live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 2))}) // ignored: no longer registered
	live.Sweep(t0)
	_, ok := live.Get("d1")
	assert.False(t, ok)
	live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 3))})
	_, ok = live.Get("d1")
	assert.False(t, ok, "a deleted device's readings do not bring it back")
}

func TestLiveRunStops(t *testing.T) {
	f := newLiveFixture(t, "d1")
	var mu sync.Mutex
	now := t0
	live := NewLive(LiveOptions{
		Lookup:        f.live.lookup,
		Now:           func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
		SweepInterval: time.Millisecond,
	})
	live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 1))})
	mu.Lock()
	now = t0.Add(10 * time.Minute)
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { live.Run(ctx); close(done) }()
	require.Eventually(t, func() bool {
		st, _ := live.Get("d1")
		return st.Status == telemetry.StatusOffline
	}, 5*time.Second, time.Millisecond)
	cancel()
	<-done
}

func TestLiveConcurrent(t *testing.T) {
	f := newLiveFixture(t, "d0", "d1", "d2", "d3")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				id := "d" + itoa((g+i)%4)
				f.live.Consume([]telemetry.Reading{reading(id, t0.Add(time.Duration(i)*time.Second), num("x", float64(i)))})
				if i%50 == 0 {
					f.live.Sweep(t0.Add(time.Hour))
					f.live.DeviceStatus(id, i%100 == 0, t0)
					_, _ = f.live.Get(id)
				}
				if g == 0 && i == 250 {
					f.live.Forget("d3")
				}
			}
		})
	}
	wg.Wait()
}

// gather returns the values of a metric family by its "status" label.
func gather(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			var status string
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "status" {
					status = lp.GetValue()
				}
			}
			switch {
			case m.GetGauge() != nil:
				out[status] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[status] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}
