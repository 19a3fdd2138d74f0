package store

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// TestLastReadings: the newest value of each metric of each device, with
// its own time, from the recent pass and, for quiet devices, the whole
// window; booleans stay booleans; a device whose tags changed (two series)
// gives its newest values; other measurements and devices outside the
// window are not returned.
func TestLastReadings(t *testing.T) {
	s := newTestStore(t)
	now := time.Now().Truncate(time.Millisecond)
	var b strings.Builder
	line := func(m, id, site, fields string, t time.Time) {
		fmt.Fprintf(&b, "%s,device_id=%s,domain=roads,site=%s %s %d\n", m, id, site, fields, t.UnixNano())
	}
	for i := 10; i >= 1; i-- { // a live device, every second
		line("tc", "live", "s1", fmt.Sprintf("flow=%d,ok=true", i), now.Add(-time.Duration(i)*time.Second))
	}
	line("tc", "live", "s1", "speed=55.5", now.Add(-time.Minute)) // speed last written earlier
	line("tc", "quiet", "s1", "flow=1", now.Add(-3*time.Hour))
	line("tc", "quiet", "s2", "flow=2", now.Add(-2*time.Hour)) // moved site: a second series
	line("tc", "quiet", "s1", "ok=false", now.Add(-2*time.Hour))
	line("tc", "gone", "s1", "flow=3", now.Add(-48*time.Hour)) // outside the window
	line("weather", "w1", "s1", "temp=-4", now.Add(-time.Second))
	line("tc", "unasked", "s1", "flow=9", now.Add(-time.Second))
	require.NoError(t, s.WriteLines(testCtx(t), []byte(b.String()), 17))

	got, err := s.LastReadings(testCtx(t), LastReadingsQuery{
		Devices: map[string][]string{"tc": {"live", "quiet", "gone", "never", `bad"id`}, "weather": {"w1"}, "empty": {"e1"}},
		Now:     now.Add(time.Millisecond), Recent: 15 * time.Minute, Window: 24 * time.Hour,
	})
	require.NoError(t, err)
	num := func(n string, v float64) telemetry.Value { return telemetry.Value{Name: n, Num: v} }
	boolean := func(n string, v bool) telemetry.Value { return telemetry.Value{Name: n, Bool: v, IsBool: true} }
	want := []telemetry.Reading{
		{DeviceID: "live", Time: now.Add(-time.Minute), Values: []telemetry.Value{num("speed", 55.5)}},
		{DeviceID: "live", Time: now.Add(-time.Second), Values: []telemetry.Value{num("flow", 1), boolean("ok", true)}},
		{DeviceID: "quiet", Time: now.Add(-2 * time.Hour), Values: []telemetry.Value{num("flow", 2), boolean("ok", false)}},
		{DeviceID: "unasked", Time: now.Add(-time.Second), Values: []telemetry.Value{num("flow", 9)}},
		{DeviceID: "w1", Time: now.Add(-time.Second), Values: []telemetry.Value{num("temp", -4)}},
	}
	require.Len(t, got, len(want), "%+v", got)
	for i := range want {
		assert.Equal(t, want[i].DeviceID, got[i].DeviceID, "reading %d", i)
		assert.True(t, want[i].Time.Equal(got[i].Time), "reading %d: %v, want %v", i, got[i].Time, want[i].Time)
		assert.Equal(t, want[i].Values, got[i].Values, "reading %d", i)
	}
}

func TestLastFluxRestrictsIDs(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q := lastFlux("db/rp", `m"x`, []string{"a", "b-1"}, start, start.Add(time.Hour))
	assert.Contains(t, q, `from(bucket: "db/rp")`)
	assert.Contains(t, q, `r._measurement == "m\"x"`)
	assert.Contains(t, q, `r.device_id =~ /^(a|b-1)$/`)
	assert.Contains(t, q, "range(start: 2026-01-01T00:00:00Z, stop: 2026-01-01T01:00:00Z)")
	assert.True(t, telemetry.ValidID("A_z-09"))
	for _, id := range []string{"", `a"b`, "a|b", "a/b", strings.Repeat("x", 65)} {
		assert.False(t, telemetry.ValidID(id), id)
	}
}
