package alerts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

func firingFor(e *Engine, ruleID string) []string {
	var out []string
	for _, a := range e.ListAlerts(AlertFilter{State: StateFiring.String()}) {
		if a.RuleID == ruleID {
			out = append(out, a.DeviceID)
		}
	}
	return out
}

// TestSeedLastReadings: absence timers start from the newest stored
// readings at start-up (t0), with the outage (30s: nothing was stored
// since t0-30s) not counted; a device already quiet for longer than `for`
// before the outage is not armed; a rule on one metric is armed only by
// that metric's reading; a reading after start-up takes over.
func TestSeedLastReadings(t *testing.T) {
	devs := []*telemetry.Device{dev("died", "north"), dev("long", "north"), dev("back", "north"), dev("other", "north")}
	retired := dev("retired", "north")
	retired.Profile.Lifecycle = telemetry.LifecycleRetired
	f := newFixture(t, nil, append(devs, retired)...)
	anyMetric := f.rule(t, Rule{Kind: KindAbsence, For: Duration(5 * time.Minute), Selector: Selector{Site: "north"}}).ID
	flow := f.rule(t, Rule{Kind: KindAbsence, Metric: "flow", For: Duration(5 * time.Minute), Selector: Selector{Domain: "roads"}}).ID

	const outage = 30 * time.Second
	stopped := at(-outage)
	n := f.e.SeedLastReadings([]telemetry.Reading{
		reading("died", stopped.Add(-2*time.Minute), "speed", 50),         // quiet 2m before the outage
		reading("died", stopped.Add(-3*time.Minute), "flow", 7),           // flow last written earlier
		reading("long", stopped.Add(-10*time.Minute), "flow", 1),          // quiet 10m: past `for`
		reading("back", stopped, "speed", 1),                              // reports again below
		reading("retired", stopped, "flow", 1),                            // not evaluated
		reading("unknown", stopped, "flow", 1),                            // not registered
		{DeviceID: "other", Time: stopped.Add(-time.Minute), Values: nil}, // no values: any-metric rules only
	}, outage, at(0))
	assert.Equal(t, 4, n, "died ×2, back, other")

	f.e.Consume([]telemetry.Reading{reading("back", at(time.Minute), "speed", 2)})

	// flow of "died" was last written at stopped-3m; without the outage its
	// timer runs from -3m: due at +2m.
	f.e.Tick(at(2*time.Minute - time.Second))
	assert.Empty(t, firingFor(f.e, flow))
	f.e.Tick(at(2 * time.Minute))
	assert.Equal(t, []string{"died"}, firingFor(f.e, flow))
	f.e.Tick(at(3*time.Minute - time.Second))
	assert.Empty(t, firingFor(f.e, anyMetric))
	f.e.Tick(at(3 * time.Minute))
	assert.Equal(t, []string{"died"}, firingFor(f.e, anyMetric), "5m after its last reading, not counting the outage")
	f.e.Tick(at(4 * time.Minute))
	assert.ElementsMatch(t, []string{"died", "other"}, firingFor(f.e, anyMetric))
	a := f.e.ListAlerts(AlertFilter{DeviceID: "died"})
	require.NotEmpty(t, a)
	for _, x := range a {
		assert.True(t, x.StartsAt.Before(at(0)), "starts at the stored reading: %v", x.StartsAt)
	}

	// Much later: "long" never fires (a restart does not page for what was
	// already overdue), "back" fires 5m after its live reading.
	f.e.Tick(at(6*time.Minute - time.Second))
	assert.NotContains(t, firingFor(f.e, anyMetric), "back")
	f.e.Tick(at(6 * time.Minute))
	f.e.Tick(at(time.Hour))
	assert.ElementsMatch(t, []string{"died", "other", "back"}, firingFor(f.e, anyMetric))
	assert.Equal(t, []string{"died"}, firingFor(f.e, flow))
	assert.Empty(t, f.e.ListAlerts(AlertFilter{DeviceID: "long"}))
	assert.Empty(t, f.e.ListAlerts(AlertFilter{DeviceID: "retired"}))
}

// TestSeedLeavesRestoredAlerts: a series that already holds an alert
// (restored from the Store) is not touched by seeding, and seeding twice
// arms nothing new.
func TestSeedLeavesRestoredAlerts(t *testing.T) {
	f := newFixture(t, nil)
	r := f.rule(t, Rule{Kind: KindAbsence, For: Duration(time.Minute), Selector: Selector{Site: "north"}})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 1)})
	f.e.Tick(at(time.Minute))
	require.Equal(t, []string{"d1"}, firingFor(f.e, r.ID))
	before := f.e.ListAlerts(AlertFilter{DeviceID: "d1"})

	readings := []telemetry.Reading{reading("d1", at(90*time.Second), "x", 1), reading("d2", at(90*time.Second), "x", 1)}
	assert.Equal(t, 1, f.e.SeedLastReadings(readings, 0, at(2*time.Minute)), "d2 only")
	assert.Equal(t, 0, f.e.SeedLastReadings(readings, 0, at(2*time.Minute)), "nothing new")
	assert.Equal(t, before, f.e.ListAlerts(AlertFilter{DeviceID: "d1"}), "the open alert is left alone")
	f.e.Tick(at(150 * time.Second))
	assert.ElementsMatch(t, []string{"d1", "d2"}, firingFor(f.e, r.ID))
}
