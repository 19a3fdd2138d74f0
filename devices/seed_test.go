package devices

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

func statuses(evs []telemetry.StatusEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.DeviceID+":"+e.Previous+"→"+e.Status)
	}
	return out
}

// TestLiveSeed: seeded devices show their stored values and reading time,
// count as online without an event, and the sweep demotes them with the
// usual events, not counting the outage (interval 60s: stale at 2m,
// offline at 5m of quiet).
func TestLiveSeed(t *testing.T) {
	f := newLiveFixture(t, "fresh", "old", "back", "other")
	start := t0
	outage := 30 * time.Second // nothing stored since start-30s
	n := f.live.Seed([]telemetry.Reading{
		reading("fresh", start.Add(-outage), num("x", 1), telemetry.Value{Name: "ok", Bool: true, IsBool: true}),
		reading("fresh", start.Add(-outage-time.Minute), num("y", 2)),   // y last written earlier
		reading("fresh", start.Add(-outage-2*time.Minute), num("x", 0)), // older: ignored
		reading("old", start.Add(-outage-4*time.Minute), num("x", 3)),
		reading("back", start.Add(-outage), num("x", 4)),
		reading("unregistered", start.Add(-outage), num("x", 5)),
	}, outage)
	assert.Equal(t, 3, n)
	assert.Empty(t, f.takeEvents(), "seeding changes nothing: no events")

	st, ok := f.live.Get("fresh")
	require.True(t, ok)
	assert.Equal(t, telemetry.StatusOnline, st.Status)
	require.NotNil(t, st.LastSeen)
	assert.Equal(t, start.Add(-outage), *st.LastSeen, "last_seen is the stored reading's time")
	assert.Equal(t, map[string]MetricValue{
		"x":  {Value: 1.0, Time: start.Add(-outage)},
		"ok": {Value: true, Time: start.Add(-outage)},
		"y":  {Value: 2.0, Time: start.Add(-outage - time.Minute)},
	}, st.Metrics)
	_, ok = f.live.Get("unregistered")
	assert.False(t, ok)
	other, _ := f.live.Get("other")
	assert.Equal(t, telemetry.StatusUnknown, other.Status, "nothing stored: unknown")
	assert.Equal(t, 3.0, statusCollectorGauge(t, f, telemetry.StatusOnline))

	// "back" reports after the restart: live data wins, seeding is over
	// for it (its quiet time counts from its arrival, not the outage).
	f.now = start.Add(time.Second)
	f.live.Consume([]telemetry.Reading{reading("back", start, num("x", 40))})
	assert.Equal(t, []string(nil), statuses(f.takeEvents()), "already online")
	f.live.Seed([]telemetry.Reading{reading("back", start.Add(-time.Hour), num("x", -1))}, outage)
	st, _ = f.live.Get("back")
	assert.Equal(t, 40.0, st.Metrics["x"].Value, "a late Seed does not overwrite live data")

	// "old" was quiet 4m before the outage: stale at once, offline 1m after
	// start-up. "fresh" was heard until the outage: stale 2m and offline 5m
	// after start-up, as if heard at start-up.
	f.now = start.Add(time.Second)
	f.live.Sweep(f.now)
	assert.Equal(t, []string{"old:online→stale"}, statuses(f.takeEvents()))
	f.now = start.Add(time.Minute)
	f.live.Sweep(f.now)
	assert.Equal(t, []string{"old:stale→offline"}, statuses(f.takeEvents()))
	// 2m05s after fresh's reading, but only 1m35s of it after the outage:
	// still online (without the outage credit it would be stale).
	f.now = start.Add(time.Minute + 35*time.Second)
	f.live.Sweep(f.now)
	assert.Empty(t, statuses(f.takeEvents()), "the outage does not count as quiet time")
	f.now = start.Add(2 * time.Minute)
	f.live.Sweep(f.now)
	assert.ElementsMatch(t, []string{"fresh:online→stale"}, statuses(f.takeEvents()))
	f.now = start.Add(2*time.Minute + time.Second)
	f.live.Sweep(f.now)
	assert.ElementsMatch(t, []string{"back:online→stale"}, statuses(f.takeEvents()),
		"back counts from its reading's arrival, without the outage")
	f.now = start.Add(5 * time.Minute)
	f.live.Sweep(f.now)
	assert.ElementsMatch(t, []string{"fresh:stale→offline"}, statuses(f.takeEvents()))
	st, _ = f.live.Get("fresh")
	assert.Equal(t, start.Add(-outage), *st.LastSeen, "still the stored reading's time")

	// A seeded device that reports comes back online as any other.
	f.now = start.Add(6 * time.Minute)
	f.live.Consume([]telemetry.Reading{reading("fresh", f.now, num("x", 7))})
	assert.Equal(t, []string{"fresh:offline→online"}, statuses(f.takeEvents()))
	f.now = start.Add(8 * time.Minute)
	f.live.Sweep(f.now)
	assert.Contains(t, statuses(f.takeEvents()), "fresh:online→stale", "no outage credit once heard")
}

func statusCollectorGauge(t *testing.T, f *liveFixture, status string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "infrawatch_devices" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "status" && l.GetValue() == status {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no infrawatch_devices{status=%q}", status)
	return 0
}

// TestLiveSeedWithoutInterval: a device with no expected interval shows
// its stored values but stays unknown, since only a status message (which
// may have said offline before the restart) would ever correct online.
func TestLiveSeedWithoutInterval(t *testing.T) {
	dev := &telemetry.Device{ID: "lc-1", Profile: &telemetry.Profile{}}
	l := NewLive(LiveOptions{
		Lookup:     func(id string) (*telemetry.Device, bool) { return dev, id == dev.ID },
		Now:        func() time.Time { return t0 },
		OnStatus:   func(telemetry.StatusEvent) {},
		Registerer: prometheus.NewRegistry(),
		Registered: func() int { return 1 },
	})
	require.Equal(t, 1, l.Seed([]telemetry.Reading{reading("lc-1", t0.Add(-time.Hour), num("barrier_down", 1))}, 0))
	st, ok := l.Get("lc-1")
	require.True(t, ok)
	assert.Equal(t, telemetry.StatusUnknown, st.Status)
	assert.Equal(t, 1.0, st.Metrics["barrier_down"].Value)
	require.NotNil(t, st.LastSeen)
	assert.Equal(t, t0.Add(-time.Hour), *st.LastSeen)
}
