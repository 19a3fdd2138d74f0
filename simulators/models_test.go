package simulators

import (
	"fmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"math"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// monday 2025-11-24 00:00 UTC; models in these tests run in UTC.
var monday = time.Date(2025, 11, 24, 0, 0, 0, 0, time.UTC)

var testRoute = []LatLon{{51.918, 4.442}, {51.92, 4.46}, {51.9225, 4.479}, {51.905, 4.492}}

func newTestModel(t *testing.T, typ string, params map[string]float64) Model {
	t.Helper()
	m, err := NewModel(typ, ModelConfig{Seed: 42, Location: LatLon{51.92, 4.48}, Route: testRoute, Params: params})
	require.NoErrorf(t, err, "new model %s", typ)
	require.Truef(t, m.Type() == typ, "Type() = %q, want %q", m.Type(), typ)
	return m
}

// sample is one reading with the time it was taken.
type sample struct {
	t time.Time
	v map[string]any
}

// week steps a model over a simulated week.
func week(m Model, step time.Duration) []sample {
	var out []sample
	for t := monday; t.Before(monday.AddDate(0, 0, 7)); t = t.Add(step) {
		out = append(out, sample{t, m.Next(t)})
	}
	return out
}

// meanAt averages a metric over weekday (or weekend) readings within 20
// minutes of the given hour.
func meanAt(samples []sample, metric string, hour float64, weekend bool) float64 {
	sum, n := 0.0, 0
	for _, s := range samples {
		h := float64(s.t.Hour()) + float64(s.t.Minute())/60
		we := s.t.Weekday() == time.Saturday || s.t.Weekday() == time.Sunday
		if we != weekend || math.Abs(h-hour) > 1.0/3 {
			continue
		}
		sum += toFloat(s.v[metric])
		n++
	}
	if n == 0 {
		return math.NaN()
	}
	return sum / float64(n)
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case bool:
		if x {
			return 1
		}
		return 0
	}
	return math.NaN()
}

var metricNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

func TestModelsStayInRangeOverAWeek(t *testing.T) {
	require.Truef(t, len(Types()) == 12, "types: %v", Types())
	for _, typ := range Types() {
		t.Run(typ, func(t *testing.T) {
			m := newTestModel(t, typ, map[string]float64{"mains_mtbf_h": 6, "backhaul_mtbf_h": 6})
			specs := m.Metrics()
			require.Truef(t, len(specs) > 0, "no metrics")
			assert.Truef(t, m.Domain() == "roads" || m.Domain() == "transport" || m.Domain() == "network", "domain %q", m.Domain())
			assert.Truef(t, m.Interval() > 0, "interval %v", m.Interval())
			// Checks are written out, not helpers: a week is 20,000 readings
			// and formatting arguments eagerly is slow under -race.
			for _, s := range week(m, 30*time.Second) {
				if len(s.v) != len(specs) {
					t.Fatalf("at %s: %d values, %d metrics", s.t, len(s.v), len(specs))
				}
				for name, v := range s.v {
					spec, ok := specs[name]
					if !ok {
						t.Fatalf("metric %s not declared", name)
					}
					switch x := v.(type) {
					case bool:
						if spec.Unit != "bool" {
							t.Fatalf("%s is a bool but declared %+v", name, spec)
						}
					case float64:
						if spec.Unit == "bool" || math.IsNaN(x) || math.IsInf(x, 0) || x < spec.Min || x > spec.Max {
							t.Fatalf("%s at %s: %v, declared %+v", name, s.t, x, spec)
						}
					default:
						t.Fatalf("%s: value %T, want float64 or bool", name, v)
					}
				}
			}
			for name := range specs {
				require.Truef(t, metricNameRE.MatchString(name), "bad metric name %q", name)
			}
		})
	}
}

func TestTrafficPeaks(t *testing.T) {
	s := week(newTestModel(t, "traffic_counter", map[string]float64{"capacity_vph": 2000}), time.Minute)
	flow8, flow3 := meanAt(s, "flow_vph", 8, false), meanAt(s, "flow_vph", 3, false)
	flow17, flow11 := meanAt(s, "flow_vph", 17, false), meanAt(s, "flow_vph", 11, false)
	assert.Truef(t, flow8 > 4*flow3, "morning peak: 08:00 %.0f vs 03:00 %.0f", flow8, flow3)
	assert.Truef(t, flow17 > 4*flow3, "evening peak: 17:00 %.0f vs 03:00 %.0f", flow17, flow3)
	assert.Truef(t, flow8 > flow11, "the peak stands above late morning: %.0f vs %.0f", flow8, flow11)
	we8 := meanAt(s, "flow_vph", 8, true)
	assert.Truef(t, we8 < 0.6*flow8, "weekend mornings are lighter: %.0f vs %.0f", we8, flow8)
	sp8, sp3 := meanAt(s, "speed_kmh", 8, false), meanAt(s, "speed_kmh", 3, false)
	assert.Truef(t, sp8 < 0.8*sp3, "speed falls near capacity: %.1f vs %.1f", sp8, sp3)
}

func TestRoadWeather(t *testing.T) {
	s := week(newTestModel(t, "road_weather", map[string]float64{"mean_temp_c": 1}), time.Minute)
	day, night := meanAt(s, "surface_temp_c", 13.5, false), meanAt(s, "surface_temp_c", 5, false)
	assert.Truef(t, day > night+4, "the sun warms the road: %.1f vs %.1f", day, night)
	ice := 0
	for _, r := range s {
		if r.v["ice_warning"] == true {
			ice++
			require.Truef(t, r.v["surface_temp_c"].(float64) < 0 && r.v["humidity_pct"].(float64) >= 85, "ice warning at %v", r.v)
		}
	}
	assert.Truef(t, ice > 0, "a winter week has ice warnings")

	for _, r := range week(newTestModel(t, "road_weather", map[string]float64{"mean_temp_c": 18}), time.Minute) {
		require.Truef(t, r.v["ice_warning"] == false, "ice in summer at %s: %v", r.t, r.v)
	}
}

func TestBridgeFollowsTraffic(t *testing.T) {
	s := week(newTestModel(t, "bridge_monitor", nil), 30*time.Second)
	assert.Truef(t, meanAt(s, "strain_ue", 8, false) > meanAt(s, "strain_ue", 3, false)+100, "strain in the peak")
	assert.Truef(t, meanAt(s, "vibration_mm_s", 17, false) > 2*meanAt(s, "vibration_mm_s", 3, false), "vibration in the peak")
}

func TestBus(t *testing.T) {
	m := newTestModel(t, "bus", nil)
	s := week(m, 30*time.Second)
	d8, d11 := meanAt(s, "delay_s", 8, false), meanAt(s, "delay_s", 11, false)
	assert.Truef(t, d8 > 3*d11, "delay grows in the peak: %.0f vs %.0f", d8, d11)
	assert.Truef(t, meanAt(s, "occupancy_pct", 8, false) > meanAt(s, "occupancy_pct", 22, false), "fuller in the peak")
	at3 := m.Next(monday.Add(3 * time.Hour))
	assert.Truef(t, at3["lat"] == testRoute[0].Lat && at3["lon"] == testRoute[0].Lon, "at the depot at night: %v", at3)
	a, b := m.Next(monday.Add(10*time.Hour)), m.Next(monday.Add(10*time.Hour+5*time.Minute))
	assert.Truef(t, a["lat"] != b["lat"] || a["lon"] != b["lon"], "the bus moves: %v %v", a, b)

	_, err := NewModel("bus", ModelConfig{Seed: 1})
	assert.Truef(t, err != nil, "a bus without a route must fail")
}

func TestLevelCrossing(t *testing.T) {
	s := week(newTestModel(t, "level_crossing", nil), 5*time.Second)
	downShare := func(from, to float64) float64 {
		down, n := 0, 0
		for _, r := range s {
			h := float64(r.t.Hour()) + float64(r.t.Minute())/60
			if r.t.Weekday() == time.Saturday || r.t.Weekday() == time.Sunday || h < from || h >= to {
				continue
			}
			n++
			if r.v["barrier_down"] == true {
				down++
			}
		}
		return float64(down) / float64(n)
	}
	// Closures are counted up while the barriers are down.
	var prev sample
	for _, r := range s {
		if r.v["barrier_down"] == true && prev.v != nil && prev.v["barrier_down"] == true {
			require.Truef(t, r.v["closure_s"].(float64) == prev.v["closure_s"].(float64)+5, "closure_s counts up: %v then %v", prev.v, r.v)
		}
		prev = r
	}
	peak, night := downShare(7, 9), downShare(1, 4)
	assert.Truef(t, peak > 0.1, "barriers down %.2f of the peak", peak)
	assert.Truef(t, peak > 3*night, "more trains in the peak: %.3f vs %.3f", peak, night)
}

func TestEVCharger(t *testing.T) {
	s := week(newTestModel(t, "ev_charger", map[string]float64{"max_kw": 50}), 15*time.Second)
	active := 0
	for _, r := range s {
		if r.v["session_active"] == true {
			active++
		} else {
			require.Truef(t, r.v["power_kw"] == 0.0, "power without a session at %s: %v", r.t, r.v)
		}
	}
	assert.Truef(t, active > len(s)/50 && active < len(s), "active in %d of %d readings", active, len(s))
}

func TestRouterLink(t *testing.T) {
	s := week(newTestModel(t, "router_link", nil), 30*time.Second)
	ev, night := meanAt(s, "utilisation_pct", 20.5, false), meanAt(s, "utilisation_pct", 4, false)
	assert.Truef(t, ev > 2*night, "evening peak: %.1f vs %.1f", ev, night)
	var hot, cold []float64
	for _, r := range s {
		u := r.v["utilisation_pct"].(float64)
		if u > 60 {
			hot = append(hot, r.v["latency_ms"].(float64))
		} else if u < 30 {
			cold = append(cold, r.v["latency_ms"].(float64))
		}
	}
	require.Truef(t, len(hot) > 0 && len(cold) > 0, "hot %d cold %d", len(hot), len(cold))
	assert.Truef(t, avg(hot) > avg(cold), "latency rises with utilisation: %.2f vs %.2f", avg(hot), avg(cold))
}

func TestCellSiteAndUPS(t *testing.T) {
	cs := week(newTestModel(t, "cell_site", map[string]float64{"backhaul_mtbf_h": 6}), 30*time.Second)
	assert.Truef(t, meanAt(cs, "connected_users", 12, false) > 3*meanAt(cs, "connected_users", 3, false), "users by day")
	assert.Truef(t, seen(cs, "backhaul_up", false), "the backhaul fails now and then")

	u := week(newTestModel(t, "ups", map[string]float64{"mains_mtbf_h": 6}), 30*time.Second)
	assert.Truef(t, seen(u, "on_battery", true), "mains fails now and then")
	minCharge := 100.0
	for _, r := range u {
		minCharge = math.Min(minCharge, r.v["charge_pct"].(float64))
	}
	assert.Truef(t, minCharge < 100, "the battery drains on battery")
}

func TestModelsAreDeterministic(t *testing.T) {
	for _, typ := range Types() {
		a, b := newTestModel(t, typ, nil), newTestModel(t, typ, nil)
		c, err := NewModel(typ, ModelConfig{Seed: 43, Route: testRoute})
		require.NoError(t, err)
		differs := false
		for i := range 3000 {
			ts := monday.Add(time.Duration(i) * 17 * time.Second)
			va, vb, vc := a.Next(ts), b.Next(ts), c.Next(ts)
			require.Truef(t, reflect.DeepEqual(va, vb), "%s at %s: %v vs %v", typ, ts, va, vb)
			differs = differs || !reflect.DeepEqual(va, vc)
		}
		assert.Truef(t, differs, "%s: another seed gives other readings", typ)
	}
}

func TestUnknownType(t *testing.T) {
	_, err := NewModel("toaster", ModelConfig{})
	assert.Truef(t, err != nil && strings.Contains(err.Error(), "unknown device type"), "err = %v", err)
}

func avg(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func seen(s []sample, metric string, v any) bool {
	for _, r := range s {
		if r.v[metric] == v {
			return true
		}
	}
	return false
}

func TestTrafficLanes(t *testing.T) {
	m := newTestModel(t, "traffic_counter", map[string]float64{"capacity_vph": 3600, "lanes": 3, "speed_limit_kmh": 80})
	s := week(m, time.Minute)
	for _, r := range s {
		sum := 0.0
		for l := 1; l <= 3; l++ {
			sum += r.v[fmt.Sprintf("flow_vph_l%d", l)].(float64)
		}
		require.Truef(t, math.Abs(sum-r.v["flow_vph"].(float64)) < 1.5, "lanes add up: %v", r.v)
	}
	// Night traffic keeps to lane 1; in the peak the lanes even out.
	l1n, l3n := meanAt(s, "flow_vph_l1", 3, false), meanAt(s, "flow_vph_l3", 3, false)
	l1p, l3p := meanAt(s, "flow_vph_l1", 8, false), meanAt(s, "flow_vph_l3", 8, false)
	assert.Truef(t, l1n > 3*l3n, "night: lane 1 %.0f vs lane 3 %.0f", l1n, l3n)
	assert.Truef(t, l3p/l1p > 2*l3n/l1n, "peak spreads over lanes: %.2f vs night %.2f", l3p/l1p, l3n/l1n)
	for l := 1; l <= 3; l++ {
		name := fmt.Sprintf("speed_kmh_l%d", l)
		// The nearside lanes slow most; the fast lane keeps a little more speed.
		assert.Truef(t, meanAt(s, name, 8, false) < 0.92*meanAt(s, name, 3, false), "%s falls in the peak: %.1f vs %.1f", name, meanAt(s, name, 8, false), meanAt(s, name, 3, false))
		assert.Truef(t, meanAt(s, fmt.Sprintf("flow_vph_l%d", l), 8, true) < meanAt(s, fmt.Sprintf("flow_vph_l%d", l), 8, false), "weekend lighter, lane %d", l)
	}
	assert.Truef(t, meanAt(s, "speed_kmh_l3", 3, false) > meanAt(s, "speed_kmh_l1", 3, false), "the outer lane is faster")
	_, err := NewModel("traffic_counter", ModelConfig{Params: map[string]float64{"lanes": 9}})
	assert.Truef(t, err != nil, "9 lanes accepted")
}

func TestBridgeTilt(t *testing.T) {
	s := week(newTestModel(t, "bridge_monitor", nil), time.Minute)
	// Thermal bowing: the afternoon tilt differs from the pre-dawn one.
	assert.Truef(t, math.Abs(meanAt(s, "tilt_mrad", 15, false)-meanAt(s, "tilt_mrad", 3, false)) > 0.4, "tilt follows the sun")
}

func TestStreetLighting(t *testing.T) {
	m := newTestModel(t, "street_lighting", map[string]float64{"lamps": 50, "lamp_w": 100})
	s := week(m, time.Minute)
	night, day, small := meanAt(s, "power_kw", 21, false), meanAt(s, "power_kw", 12, false), meanAt(s, "power_kw", 2, false)
	assert.Truef(t, night > 4 && night < 5.6, "evening: %.2f kW for 50 x 100 W", night)
	assert.Truef(t, day < 0.1, "day: %.2f kW", day)
	assert.Truef(t, small < 0.7*night && small > 0.3*night, "dimmed after midnight: %.2f vs %.2f", small, night)
	assert.Truef(t, meanAt(s, "lamps_on", 12, false) == 0 && meanAt(s, "lamps_on", 22, false) == 1, "on at night only")
	// In late November in the Netherlands the lamps are on at 17:00 UTC, in June not.
	rise, set := daylight(time.Date(2025, 6, 21, 0, 0, 0, 0, time.UTC), 52)
	assert.Truef(t, set > 20.5 && rise < 5.5, "June daylight %.1f-%.1f", rise, set)
	rise, set = daylight(monday, 52)
	assert.Truef(t, set <= 17.1 && rise > 8, "November daylight %.1f-%.1f", rise, set)
}

func TestPassengerCounter(t *testing.T) {
	res := week(newTestModel(t, "passenger_counter", map[string]float64{"residential": 0.9}), time.Minute)
	assert.Truef(t, meanAt(res, "entries_per_min", 8, false) > 2*meanAt(res, "exits_per_min", 8, false), "residential: people leave in the morning")
	assert.Truef(t, meanAt(res, "exits_per_min", 17.2, false) > 2*meanAt(res, "entries_per_min", 17.2, false), "and come home in the evening")
	assert.Truef(t, meanAt(res, "entries_per_min", 8, false) > 3*meanAt(res, "entries_per_min", 11, false), "the morning peak")
	assert.Truef(t, meanAt(res, "entries_per_min", 8, true) < 0.5*meanAt(res, "entries_per_min", 8, false), "weekend mornings are quiet")
	assert.Truef(t, meanAt(res, "entries_per_min", 3, false) == 0, "no trains at night")
	centre := week(newTestModel(t, "passenger_counter", map[string]float64{"residential": 0.1}), time.Minute)
	assert.Truef(t, meanAt(centre, "exits_per_min", 8, false) > 2*meanAt(centre, "entries_per_min", 8, false), "centre: people arrive in the morning")
}

func TestBusStops(t *testing.T) {
	m := newTestModel(t, "bus", map[string]float64{"stop_spacing_m": 400, "dwell_s": 20})
	var atStop, moving, maxStop int
	var prevStop float64 = -1
	changes := 0
	for ts := monday.Add(10 * time.Hour); ts.Before(monday.Add(12 * time.Hour)); ts = ts.Add(5 * time.Second) {
		v := m.Next(ts)
		if v["at_stop"] == true {
			atStop++
			require.Truef(t, v["speed_kmh"] == 0.0, "moving at a stop: %v", v)
		} else {
			moving++
			require.Truef(t, v["speed_kmh"].(float64) > 5, "stopped between stops: %v", v)
		}
		st := v["stop_index"].(float64)
		maxStop = max(maxStop, int(st))
		if st != prevStop {
			changes++
		}
		prevStop = st
	}
	// Dwelling at stops and laying over at the termini take about half the time.
	assert.Truef(t, float64(atStop) > 0.3*float64(atStop+moving) && float64(moving) > 0.4*float64(atStop+moving), "at stops %d, moving %d", atStop, moving)
	assert.Truef(t, maxStop >= 4 && changes > 10, "stops passed: max %d, changes %d", maxStop, changes)
}
