package alerts

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBacktest(t *testing.T) {
	series := func(dev string, vals ...float64) []telemetry.Reading {
		var out []telemetry.Reading
		for i, v := range vals {
			out = append(out, reading(dev, at(time.Duration(i)*time.Minute), "x", v))
		}
		return out
	}
	cases := []struct {
		name     string
		rule     Rule
		readings []telemetry.Reading
		want     []Interval
	}{
		{
			"hysteresis: one interval", Rule{Name: "r", Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, ClearValue: ptr(70)},
			series("d1", 50, 81, 79, 85, 71, 70, 90),
			[]Interval{
				{DeviceID: "d1", Start: at(time.Minute), End: at(5 * time.Minute), Value: 81, Since: at(time.Minute)},
				{DeviceID: "d1", Start: at(6 * time.Minute), Value: 90, Since: at(6 * time.Minute)},
			},
		},
		{
			"for: fires at the deadline between readings", Rule{Name: "r", Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, For: Duration(90 * time.Second)},
			series("d1", 90, 90, 90, 10),
			[]Interval{{DeviceID: "d1", Start: at(90 * time.Second), End: at(3 * time.Minute), Value: 90, Since: at(0)}},
		},
		{
			"absence: gap longer than for", Rule{Name: "r", Kind: KindAbsence, For: Duration(5 * time.Minute)},
			[]telemetry.Reading{reading("d1", at(0), "x", 1), reading("d1", at(3*time.Minute), "x", 1), reading("d1", at(20*time.Minute), "y", 1)},
			[]Interval{{DeviceID: "d1", Start: at(8 * time.Minute), End: at(20 * time.Minute), Value: 300, Since: at(3 * time.Minute)}},
		},
		{
			"per device, unordered input", Rule{Name: "r", Kind: KindThreshold, Metric: "x", Op: ">=", Value: 5},
			[]telemetry.Reading{reading("b", at(time.Minute), "x", 1), reading("a", at(0), "x", 5), reading("b", at(0), "x", 6)},
			[]Interval{
				{DeviceID: "a", Start: at(0), Value: 5, Since: at(0)},
				{DeviceID: "b", Start: at(0), End: at(time.Minute), Value: 6, Since: at(0)},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Backtest(tc.rule, tc.readings)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	_, err := Backtest(Rule{Kind: "nope"}, nil)
	assert.Error(t, err)
}

func FuzzRuleJSON(f *testing.F) {
	f.Add(`{"name":"n","kind":"threshold","metric":"x","op":">","value":1,"for":"5m","clear_value":0}`)
	f.Add(`{"name":"n","kind":"absence","for":30,"message":"{{.DeviceID}}"}`)
	f.Add(`{"name":"n","kind":"rate","metric":"x","value":-1,"notify":{"webhooks":["http://x"]}}`)
	f.Fuzz(func(t *testing.T, s string) {
		var r Rule
		if json.Unmarshal([]byte(s), &r) != nil {
			return
		}
		r = r.withDefaults()
		if r.Validate() != nil {
			return
		}
		c, err := compile(r)
		if err != nil {
			t.Fatalf("valid rule does not compile: %v", err)
		}
		_ = c.message(nil, "d", "m", 1)
		_ = c.bad(1)
		_ = c.cleared(1)
	})
}

// BenchmarkConsume measures evaluation per reading with 10,000 rules over
// 100,000 devices: rules select by device ids, site, type and tag, as
// operators write them.
func BenchmarkConsume(b *testing.B) {
	reg, ids := operatorFleet(100_000)
	e := operatorRules(b, reg, len(ids), 10_000)
	batch := make([]telemetry.Reading, 1)
	vals := []telemetry.Value{{Name: "flow_vph", Num: 100}, {Name: "speed_kmh", Num: 50}, {Name: "temp_c", Num: 3}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		batch[0] = telemetry.Reading{DeviceID: ids[i%len(ids)], Time: at(time.Duration(i) * time.Millisecond), Values: vals}
		e.Consume(batch)
	}
}

// TestMemoryPerRule reports how the engine's heap grows with rules, and
// with the evaluation state rules keep once every device has sent a
// reading (issue #8: memory growth with devices and rules). The test's
// device registry is built first and not counted.
func TestMemoryPerRule(t *testing.T) {
	if testing.Short() || testenv.RaceEnabled {
		t.Skip("builds 100,000 devices and up to 10,000 rules; a heap measurement (not with -race)")
	}
	heap := func() int64 { return int64(testenv.HeapAfterGC()) }
	const nDevices = 100_000
	reg, ids := operatorFleet(nDevices)
	vals := []telemetry.Value{{Name: "flow_vph", Num: 100}, {Name: "speed_kmh", Num: 50}, {Name: "temp_c", Num: 3}}
	batch := make([]telemetry.Reading, 1)
	var noRules int64
	for _, nRules := range []int{0, 1_000, 10_000} {
		base := heap()
		e := operatorRules(t, reg, nDevices, nRules)
		withRules := heap() - base
		for i, id := range ids {
			batch[0] = telemetry.Reading{DeviceID: id, Time: at(time.Duration(i) * time.Microsecond), Values: vals}
			e.Consume(batch)
		}
		withState := heap() - base
		if nRules == 0 {
			noRules = withState
		}
		t.Logf("devices=%d rules=%5d  engine with rules %6.1f MiB  after one reading per device %6.1f MiB (%5.0f B/device)  per rule %5.0f B",
			nDevices, nRules, float64(withRules)/(1<<20), float64(withState)/(1<<20), float64(withState)/nDevices,
			float64(withState-noRules)/float64(max(nRules, 1)))
		runtime.KeepAlive(e)
	}
}

// operatorFleet is a registry of nDevices devices across 500 sites, with
// types and a segment tag.
func operatorFleet(nDevices int) (*registry, []string) {
	const nSites = 500
	reg := newRegistry()
	ids := make([]string, nDevices)
	for i := range nDevices {
		ids[i] = fmt.Sprintf("dev%06d", i)
		reg.add(&telemetry.Device{ID: ids[i], Profile: &telemetry.Profile{Type: operatorTypes[i%len(operatorTypes)], Domain: "roads", Site: fmt.Sprintf("site%03d", i%nSites), Lifecycle: telemetry.LifecycleActive, Tags: map[string]string{"segment": fmt.Sprint(i % 5000)}}})
	}
	return reg, ids
}

var operatorTypes = []string{"traffic_counter", "weather_station", "router", "ups"}

// operatorRules builds an engine over reg with nRules rules that select by
// device ids, site, type and tag, as operators write them.
func operatorRules(tb testing.TB, reg *registry, nDevices, nRules int) *Engine {
	const nSites = 500
	e, err := NewEngine(tb.Context(), Options{Lookup: reg.lookup, Registerer: prometheus.NewRegistry()})
	require.NoError(tb, err)
	metrics := []string{"flow_vph", "speed_kmh", "temp_c", "util_pct", "latency_ms", "loss_pct", "soc_pct", "volt"}
	for i := range nRules {
		r := Rule{Name: fmt.Sprint("r", i), Enabled: true, Kind: KindThreshold, Metric: metrics[i%len(metrics)],
			Op: ">", Value: 1e9, ClearValue: ptr(1e8)}
		switch i % 10 {
		case 0, 1, 2, 3, 4, 5: // by device
			r.Selector.DeviceIDs = []string{fmt.Sprintf("dev%06d", (i*7919)%nDevices), fmt.Sprintf("dev%06d", (i*104729)%nDevices)}
		case 6, 7: // by site and type
			r.Selector.Site, r.Selector.Type = fmt.Sprintf("site%03d", i%nSites), operatorTypes[i%len(operatorTypes)]
		case 8: // by tag
			r.Selector.Tags = map[string]string{"segment": fmt.Sprint(i % 5000)}
			r.Selector.Domain = "roads"
			r.Kind, r.Op, r.Value, r.ClearValue = KindRate, "", 1e6, nil
		case 9:
			r.Kind, r.Op, r.Value, r.ClearValue, r.For = KindAbsence, "", 0, nil, Duration(10*time.Minute)
			r.Selector.Site = fmt.Sprintf("site%03d", i%nSites)
		}
		if _, err := e.CreateRule(tb.Context(), r); err != nil {
			tb.Fatal(err)
		}
	}
	return e
}
