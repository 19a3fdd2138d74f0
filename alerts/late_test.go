package alerts

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A reading older than the one that resolved an alert (QoS 1 redelivery
// after a reconnect or a restart, a device's buffer) must not open a second
// alert for a condition that is already over: the resolved threshold series
// is dropped, and with it the time of the newest reading it evaluated.
func TestLateReadingAfterResolveOpensNoDuplicate(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule Rule
	}{
		{"for 0", Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80}},
		{"for 5m", Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, For: Duration(5 * time.Minute)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.rule(t, tc.rule)
			f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
			f.e.Tick(at(5 * time.Minute))
			f.e.Consume([]telemetry.Reading{reading("d1", at(6*time.Minute), "x", 10)})
			require.Equal(t, []string{"firing:d1", "resolved:d1"}, f.rec.transitions())

			f.e.Consume([]telemetry.Reading{reading("d1", at(time.Minute), "x", 95)})
			f.e.Tick(at(30 * time.Minute))
			assert.Equal(t, []string{"firing:d1", "resolved:d1"}, f.rec.transitions(), "late reading opened a duplicate")
			assert.Empty(t, f.e.ListAlerts(AlertFilter{State: "pending"}))

			// A reading newer than the resolve is a new condition. So is
			// another device's late reading: the guard is per device.
			f.e.Consume([]telemetry.Reading{reading("d2", at(time.Minute), "x", 95), reading("d1", at(7*time.Minute), "x", 95)})
			f.e.Tick(at(40 * time.Minute))
			assert.Equal(t, []string{"firing:d1", "resolved:d1", "firing:d2", "firing:d1"}, f.rec.transitions())
		})
	}
}

// The same after a restart from the same Store: redelivery after a restart
// is the likeliest way a late reading arrives, and then no series is left
// in memory. Rate series are kept in memory, but not across a restart.
func TestLateReadingAfterRestartOpensNoDuplicate(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "infrawatch.db")
	st1, err := NewSQLiteStore(ctx, openDB(t, path))
	require.NoError(t, err)
	f1 := newFixture(t, st1)
	f1.rule(t, Rule{Name: "hot", Kind: KindThreshold, Metric: "x", Op: ">", Value: 80})
	f1.rule(t, Rule{Name: "jump", Kind: KindRate, Metric: "y", Value: 10})
	for _, r := range []telemetry.Reading{
		reading("d1", at(0), "x", 90),                // fires
		reading("d1", at(2*time.Minute), "x", 10),    // resolves
		reading("d2", at(0), "y", 100),               //
		reading("d2", at(time.Minute), "y", 105),     // +5/min
		reading("d2", at(2*time.Minute), "y", 125),   // +20/min: fires
		reading("d2", at(3*time.Minute), "y", 126),   // +1/min: resolves
		reading("d2", at(2*time.Minute+1), "y", 300), // late, and the series is in memory: ignored
	} {
		f1.e.Consume([]telemetry.Reading{r})
	}
	require.Equal(t, []string{"firing:d1", "resolved:d1", "firing:d2", "resolved:d2"}, f1.rec.transitions())
	require.NoError(t, f1.e.Flush(ctx))

	st2, err := NewSQLiteStore(ctx, openDB(t, path))
	require.NoError(t, err)
	f2 := newFixture(t, st2)
	f2.clk.set(at(10 * time.Minute))
	// The broker redelivers what the first life had not acknowledged.
	f2.e.Consume([]telemetry.Reading{
		reading("d1", at(time.Minute), "x", 95),
		reading("d2", at(time.Minute), "y", 105), reading("d2", at(2*time.Minute), "y", 125),
	})
	f2.e.Tick(at(11 * time.Minute))
	assert.Empty(t, f2.rec.transitions(), "redelivered readings opened duplicates")
	assert.Empty(t, f2.e.ListAlerts(AlertFilter{State: "firing"}))

	// New readings still open new alerts.
	f2.e.Consume([]telemetry.Reading{reading("d1", at(11*time.Minute), "x", 95), reading("d2", at(4*time.Minute), "y", 100)})
	assert.Equal(t, []string{"firing:d1", "firing:d2"}, f2.rec.transitions())
}

// The guard remembers only the resolved alerts the engine retains
// (ResolvedRetention), so it cannot grow without limit.
func TestResolvedGuardIsBounded(t *testing.T) {
	var devs []*telemetry.Device
	for i := range 10 {
		devs = append(devs, dev(fmt.Sprint("d", i), "north"))
	}
	reg := newRegistry(devs...)
	e, err := NewEngine(context.Background(), Options{Lookup: reg.lookup, Registerer: prometheus.NewRegistry(), ResolvedRetention: 3})
	require.NoError(t, err)
	_, err = e.CreateRule(context.Background(), Rule{Name: "hot", Enabled: true, Kind: KindThreshold, Metric: "x", Op: ">", Value: 80})
	require.NoError(t, err)
	resolveOn := func(d string, from time.Duration) {
		e.Consume([]telemetry.Reading{reading(d, at(from), "x", 90), reading(d, at(from+time.Minute), "x", 10)})
	}
	// d0 twice: one entry, kept while either of its alerts is retained.
	resolveOn("d0", 0)
	resolveOn("d0", 10*time.Minute)
	resolveOn("d1", 0)
	require.Len(t, e.resolvedThrough, 2)
	resolveOn("d2", 0) // d0's first alert leaves the list, its second stays
	require.Len(t, e.resolvedThrough, 3)
	assert.Equal(t, at(11*time.Minute), e.resolvedThrough[seriesKey{e.ListRules(context.Background())[0].ID, "d0"}].at)
	for i := 3; i < 10; i++ {
		resolveOn(fmt.Sprint("d", i), 0)
		assert.LessOrEqual(t, len(e.resolvedThrough), 3)
	}
	// d0 is forgotten: its late reading is evaluated as before.
	e.Consume([]telemetry.Reading{reading("d0", at(5*time.Minute), "x", 90)})
	assert.Equal(t, 1, e.ActiveCount("d0"))
}

// A hand resolve says nothing about which readings were evaluated (its time
// is the wall clock's), so it sets no late-reading guard: the device's next
// bad reading, though older than the resolve, opens a new alert.
func TestHandResolveSetsNoLateGuard(t *testing.T) {
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	firing := f.e.ListAlerts(AlertFilter{State: "firing"})
	require.Len(t, firing, 1)
	f.clk.set(at(10 * time.Minute))
	_, err := f.e.Resolve(context.Background(), firing[0].ID, "crew-7", "replaced the sensor")
	require.NoError(t, err)

	f.e.Consume([]telemetry.Reading{reading("d1", at(time.Minute), "x", 95)})
	assert.Len(t, f.e.ListAlerts(AlertFilter{State: "firing"}), 1, "a reading after the last evaluated one is a new condition")
}
