package alerts

import (
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/stretchr/testify/assert"
)

// TestBacklogDoesNotFlap: a device back from an hour's outage uploads the
// readings it buffered, old by reading time, over several seconds while
// Tick runs. Timers count `for` from when the engine heard a reading, not
// only from the reading's own time: the absence alert raised by the outage
// resolves once, and is not fired again by every Tick during the upload;
// a bad reading in the backlog that the next one clears does not fire a
// `for` rule.
func TestBacklogDoesNotFlap(t *testing.T) {
	upload := func(f *fixture, values func(i int) float64) {
		wall := at(61 * time.Minute)
		for i := 1; i <= 360; i++ { // an hour of 10 s readings at 10 per second
			f.clk.set(wall)
			f.e.Consume([]telemetry.Reading{reading("d1", at(time.Duration(i)*10*time.Second), "x", values(i))})
			wall = wall.Add(100 * time.Millisecond)
			f.e.Tick(wall)
		}
	}
	t.Run("absence", func(t *testing.T) {
		f := newFixture(t, nil)
		f.rule(t, Rule{Kind: KindAbsence, Metric: "x", For: Duration(10 * time.Minute)})
		f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 1)})
		f.e.Tick(at(11 * time.Minute))
		upload(f, func(int) float64 { return 1 })
		assert.Equal(t, []string{"firing:d1", "resolved:d1"}, f.rec.transitions())
		// The clock still runs once the upload ends.
		f.e.Tick(at(61*time.Minute + 36*time.Second + 10*time.Minute))
		assert.Equal(t, []string{"firing:d1", "resolved:d1", "firing:d1"}, f.rec.transitions())
	})
	t.Run("pending", func(t *testing.T) {
		f := newFixture(t, nil)
		f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, For: Duration(5 * time.Minute)})
		upload(f, func(i int) float64 {
			if i == 3 {
				return 90 // a 10 s blip, far shorter than `for`
			}
			return 10
		})
		assert.Empty(t, f.rec.transitions())
		assert.Empty(t, f.e.ListAlerts(AlertFilter{DeviceID: "d1"}))
	})
}
