package devices

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// TestLiveForgetRacesReadingInFlight: a reading whose Lookup ran before its
// device was deleted, and that locks the entry after Delete and Forget
// cleared the slot, must not claim the slot again: no "online" event and no
// online count for a device that no longer exists.
func TestLiveForgetRacesReadingInFlight(t *testing.T) {
	var mu sync.Mutex
	dev := &telemetry.Device{ID: "d1", Slot: 0, Profile: &telemetry.Profile{Interval: time.Minute}}
	devs := map[string]*telemetry.Device{"d1": dev}
	var live *Live
	var hook func()
	var events []telemetry.StatusEvent
	reg := prometheus.NewRegistry()
	live = NewLive(LiveOptions{
		Lookup: func(id string) (*telemetry.Device, bool) {
			mu.Lock()
			d, ok := devs[id]
			h := hook
			hook = nil
			mu.Unlock()
			if h != nil {
				h() // what another goroutine does between lock's lookup and its e.mu.Lock
			}
			return d, ok
		},
		Now:        func() time.Time { return t0 },
		OnStatus:   func(e telemetry.StatusEvent) { events = append(events, e) },
		Registerer: reg,
		Registered: func() int { mu.Lock(); defer mu.Unlock(); return len(devs) },
	})
	live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 1))})
	require.Len(t, events, 1)
	events = nil

	mu.Lock()
	hook = func() {
		mu.Lock()
		delete(devs, "d1") // registry Delete
		mu.Unlock()
		live.Forget("d1") // the API's Forget after it
	}
	mu.Unlock()
	live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 2))})

	assert.Empty(t, events, "no status event for a deleted device")
	assert.Equal(t, int64(0), live.online.Load(), "online gauge counts a deleted device")
}

// TestLiveEntryFollowsUpdates: after an update (a new record in the same
// slot) the sweep moves the entry to the current record, so a superseded
// one, and its profile, are not kept alive by the live state.
func TestLiveEntryFollowsUpdates(t *testing.T) {
	reg, live := liveOnRegistry(t, "x")
	ctx := t.Context()
	old, _ := reg.Lookup("d1")
	d := validDevice("d1")
	d.ExpectedInterval = 120
	_, err := reg.Update(ctx, d)
	require.NoError(t, err)
	live.Consume([]telemetry.Reading{reading("d1", t0, num("x", 2))})
	live.Sweep(t0)
	cur, _ := reg.Lookup("d1")
	require.NotSame(t, old, cur)
	e := live.slots.at(cur.Slot, false)
	assert.Same(t, cur, e.dev, "entry still references the superseded record")
}

// TestLiveFullNameSetCostsNothing: a device at maxMetrics that sends new
// metric names costs no copy of its name set per reading.
func TestLiveFullNameSetCostsNothing(t *testing.T) {
	live := NewLive(LiveOptions{})
	vals := make([]telemetry.Value, maxMetrics)
	for i := range vals {
		vals[i] = num("m"+itoa(10000+i), 1)
	}
	live.Consume([]telemetry.Reading{reading("d", t0, vals...)})
	extra := make([]telemetry.Value, 50)
	for i := range extra {
		extra[i] = num("n"+itoa(i), 1)
	}
	rd := []telemetry.Reading{reading("d", t0, extra...)}
	allocs := testing.AllocsPerRun(10, func() { live.Consume(rd) })
	t.Logf("allocs per 50-value reading at the cap: %.0f", allocs)
	assert.Less(t, allocs, 5.0)
}

// TestLiveUsesReadingsDevice: a reading that carries its registry entry (as
// ingest's do) costs no lookup once its device holds its slot; one that
// claims a slot is still checked against the registry.
func TestLiveUsesReadingsDevice(t *testing.T) {
	dev := &telemetry.Device{ID: "d1", Slot: 3, Profile: &telemetry.Profile{Interval: time.Minute}}
	var lookups int
	live := NewLive(LiveOptions{
		Lookup: func(id string) (*telemetry.Device, bool) {
			lookups++
			return dev, id == dev.ID
		},
		Now: func() time.Time { return t0 },
	})
	rd := telemetry.Reading{DeviceID: "d1", Time: t0, Values: []telemetry.Value{num("x", 1)}, Device: dev}
	live.Consume([]telemetry.Reading{rd})
	assert.Equal(t, 1, lookups, "claiming the slot asks the registry")
	lookups = 0
	for range 10 {
		live.Consume([]telemetry.Reading{rd})
	}
	assert.Zero(t, lookups)
	st, _ := live.Get("d1")
	assert.Equal(t, telemetry.StatusOnline, st.Status)
}

// TestLiveSlotChangesHands: a device created after another was deleted
// takes its registry slot; with neither Forget nor a sweep in between, its
// first reading claims the slot without inheriting the deleted device's
// values or status count, and the deleted device's late readings stay out.
func TestLiveSlotChangesHands(t *testing.T) {
	reg, live := liveOnRegistry(t, "old")
	ctx := t.Context()
	d1, _ := reg.Lookup("d1")
	require.NoError(t, reg.Delete(ctx, "d1"))
	_, err := reg.Create(ctx, validDevice("d2"))
	require.NoError(t, err)
	d2, _ := reg.Lookup("d2")
	require.Equal(t, d1.Slot, d2.Slot, "the freed slot is reused")

	live.Consume([]telemetry.Reading{reading("d2", t0, num("new", 2))})
	st, ok := live.Get("d2")
	require.True(t, ok)
	assert.Equal(t, map[string]MetricValue{"new": {Value: 2.0, Time: t0}}, st.Metrics)
	assert.Equal(t, int64(1), live.online.Load(), "the deleted device no longer counts")

	live.Consume([]telemetry.Reading{{DeviceID: "d1", Time: t0, Values: []telemetry.Value{num("old", 3)}, Device: d1}})
	st, _ = live.Get("d2")
	assert.NotContains(t, st.Metrics, "old", "a late reading of the deleted device stays out")
	_, ok = live.Get("d1")
	assert.False(t, ok)
}
