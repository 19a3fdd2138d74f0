package alerts

import (
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAlertsOfDepartedDevicesResolve: an open threshold alert has no timer,
// and no reading reaches its rule once its device is deleted, retired, or
// changed so that the rule no longer selects it; Tick ends it (by
// "system") instead of leaving it firing for good. An absence rule does
// not fire for a device it no longer selects.
func TestAlertsOfDepartedDevicesResolve(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(r *registry)
		why    string
	}{
		{"deleted", func(r *registry) {
			r.mu.Lock()
			delete(r.devs, "d1")
			r.mu.Unlock()
		}, "device removed"},
		{"retired", func(r *registry) {
			d := dev("d1", "north")
			d.Profile.Lifecycle = telemetry.LifecycleRetired
			r.add(d)
		}, "device removed"},
		{"moved to another site", func(r *registry) { r.add(dev("d1", "south")) }, "device no longer selected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, Selector: Selector{Site: "north"}})
			f.rule(t, Rule{Kind: KindAbsence, Metric: "x", For: Duration(10 * time.Minute), Selector: Selector{Site: "north"}})
			f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
			require.Equal(t, []string{"firing:d1"}, f.rec.transitions())
			tc.change(f.reg)
			for m := time.Minute; m <= time.Hour; m += time.Minute {
				f.e.Tick(at(m))
			}
			assert.Equal(t, []string{"firing:d1", "resolved:d1"}, f.rec.transitions())
			assert.Equal(t, 0, f.e.ActiveCount("d1"))
			res := f.e.ListAlerts(AlertFilter{State: "resolved"})
			require.Len(t, res, 1)
			assert.Equal(t, "system", res[0].ResolvedBy)
			assert.Equal(t, tc.why, res[0].ResolveNote)
		})
	}
}
