package simulators

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"log/slog"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// pureSim is a running fleet without a broker: connections are fakes that
// are up unless cut, and messages are collected instead of published. Tests
// drive it with explicit wall times.
type pureSim struct {
	s    *sim
	sc   *scheduler
	now  time.Time
	jobs []pubJob
	keep bool // keep payloads (else only count)
	n    int
	logs *testenv.LogBuffer
}

func newPureSim(t testing.TB, o Options, wall0 time.Time) *pureSim {
	t.Helper()
	if o.FleetYAML == nil && o.FleetFile == "" {
		o.FleetYAML = fleetYAML(t)
	}
	p := &pureSim{now: wall0, keep: true, logs: &testenv.LogBuffer{}}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewJSONHandler(p.logs, nil))
	}
	o = o.withDefaults()
	require.NoError(t, o.Validate(), "options")
	fleet, specs, err := loadFleet(o)
	require.NoError(t, err, "load fleet")
	if o.Faults && o.FaultRates == (FaultRates{}) && fleet.Faults != nil {
		o.FaultRates = *fleet.Faults
	}
	p.s = newSim(o, o.Logger, specs, func(id string) *deviceConn { return &deviceConn{id: id} })
	p.s.clock = newSimClock(wall0, o.Start, o.Speedup)
	p.s.emit = func(_ context.Context, j pubJob) bool {
		p.n++
		if p.keep {
			p.jobs = append(p.jobs, j)
		}
		return true
	}
	p.sc = p.s.newScheduler(wall0)
	return p
}

// advance runs the fleet until wall time until, in steps of step.
func (p *pureSim) advance(until time.Time, step time.Duration) {
	for p.now.Before(until) {
		p.now = p.now.Add(step)
		p.sc.runDue(context.Background(), p.now)
	}
}

// readingsOf decodes every reading in the collected messages, per device.
func readingsOf(t testing.TB, jobs []pubJob) map[string][]wireReading {
	out := map[string][]wireReading{}
	for _, j := range jobs {
		parts := strings.Split(j.topic, "/")
		if !json.Valid(j.payload) || len(j.payload) > oversizedLimit {
			continue
		}
		switch parts[0] {
		case "devices":
			var r wireReading
			if json.Unmarshal(j.payload, &r) == nil {
				out[parts[1]] = append(out[parts[1]], r)
			}
		case "gateways":
			var m map[string][]wireReading
			if json.Unmarshal(j.payload, &m) == nil {
				for id, rs := range m {
					out[id] = append(out[id], rs...)
				}
			}
		}
	}
	return out
}

func TestSameSeedSameMessages(t *testing.T) {
	wall0 := monday.Add(8 * time.Hour)
	run := func(seed int64) []pubJob {
		o := Options{Devices: 80, Seed: seed, Faults: true, MaxConnections: 40, Start: wall0,
			FaultRates: FaultRates{Spike: 0.02, Stuck: 0.01, Drift: 0.01, Dropout: 0.01, Offline: 0.01,
				BackhaulLoss: 0.01, ClockSkew: 0.01, Duplicate: 0.02, Malformed: 0.02, Oversized: 0.01}}
		p := newPureSim(t, o, wall0)
		p.advance(wall0.Add(4*time.Minute), 100*time.Millisecond)
		return p.jobs
	}
	a, b, c := run(4), run(4), run(5)
	require.Truef(t, len(a) > 500, "only %d messages", len(a))
	require.Truef(t, len(a) == len(b), "same seed: %d vs %d messages", len(a), len(b))
	for i := range a {
		if a[i].topic != b[i].topic || !bytes.Equal(a[i].payload, b[i].payload) {
			t.Fatalf("same seed, message %d differs:\n%s %s\n%s %s", i, a[i].topic, a[i].payload, b[i].topic, b[i].payload)
		}
	}
	same := len(a) == len(c)
	for i := 0; same && i < len(a); i++ {
		same = bytes.Equal(a[i].payload, c[i].payload)
	}
	require.Truef(t, !same, "another seed gave the same messages")
}

// TestFaultRates checks that each fault kind strikes at its configured rate
// (per chance, within 4.5 standard deviations of the binomial), that each is
// logged, and that the message faults are visible in what is published.
func TestFaultRates(t *testing.T) {
	wall0 := monday.Add(7 * time.Hour)
	rates := FaultRates{Spike: 0.02, Stuck: 0.004, Drift: 0.002, Dropout: 0.004, Offline: 0.003,
		BackhaulLoss: 0.004, ClockSkew: 0.002, Duplicate: 0.01, Malformed: 0.01, Oversized: 0.003}
	o := Options{Devices: 400, Rate: 400, Seed: 21, Faults: true, FaultRates: rates, Start: wall0}
	p := newPureSim(t, o, wall0)
	p.advance(wall0.Add(3*time.Minute), 50*time.Millisecond)

	wantRate := map[FaultKind]float64{}
	for _, f := range rates.rateFields() {
		for k := range numFaultKinds {
			if k.String() == f.name {
				wantRate[k] = *f.p
			}
		}
	}
	require.Truef(t, len(wantRate) == int(numFaultKinds), "every kind has a rate: %v", wantRate)
	got := p.s.faultStats.snapshot()
	readings := p.s.stats.readings.Load()
	logged := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(p.logs.String()), "\n") {
		var rec struct{ Msg, Kind string }
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "log line ", line)
		if rec.Msg == "simulated fault" {
			logged[rec.Kind]++
		}
	}
	t.Logf("%d readings, %d messages", readings, len(p.jobs))
	for k := range numFaultKinds {
		c, rate := got[k], wantRate[k]
		sd := math.Sqrt(float64(c.Chances) * rate * (1 - rate))
		exp := float64(c.Chances) * rate
		t.Logf("%-14s chances %7d events %5d expected %7.1f ± %.1f", k, c.Chances, c.Events, exp, sd)
		require.Truef(t, c.Chances > 0, "%s had no chance", k)
		assert.Truef(t, math.Abs(float64(c.Events)-exp) <= 4.5*sd+1, "%s: %d events, expected %.1f ± %.1f", k, c.Events, exp, sd)
		assert.Truef(t, logged[k.String()] == int(c.Events), "%s: %d logged, %d counted", k, logged[k.String()], c.Events)
	}
	// The reading faults have a chance at every reading not already in a
	// fault of their own (stuck sensors are stuck a good share of the time
	// at these rates).
	assert.Truef(t, got[FaultDuplicate].Chances == readings, "duplicate: %d chances in %d readings", got[FaultDuplicate].Chances, readings)
	for _, k := range []FaultKind{FaultSpike, FaultClockSkew} {
		assert.Truef(t, float64(got[k].Chances) > 0.6*float64(readings), "%s: %d chances in %d readings", k, got[k].Chances, readings)
	}

	// What the broker would see.
	var malformed, oversized, nanStr, badMetric int
	seen := map[string]int{}
	for _, j := range p.jobs {
		switch {
		case len(j.payload) > oversizedLimit:
			oversized++
			require.Truef(t, json.Valid(j.payload), "oversized payload is not JSON")
			continue
		case !json.Valid(j.payload):
			malformed++
			continue
		case bytes.Contains(j.payload, []byte(`:"NaN"`)):
			nanStr++
		case bytes.Contains(j.payload, []byte(`!"`)):
			badMetric++
		}
		seen[j.topic+string(j.payload)]++
	}
	assert.Truef(t, int64(oversized) == got[FaultOversized].Events, "oversized: %d published, %d logged", oversized, got[FaultOversized].Events)
	assert.Truef(t, int64(malformed+nanStr+badMetric) == got[FaultMalformed].Events, "malformed: %d+%d+%d published, %d logged", malformed, nanStr, badMetric, got[FaultMalformed].Events)
	assert.Truef(t, malformed > 0 && nanStr > 0 && badMetric > 0, "every malformed form: json %d nan %d metric %d", malformed, nanStr, badMetric)
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	assert.Truef(t, dups > 0, "no duplicate message published")

	// Values: spikes leave the range both ways; skewed clocks stamp far off.
	rs := readingsOf(t, p.jobs)
	var up, down, skewed int
	for _, d := range p.s.devs {
		for _, r := range rs[d.spec.ID] {
			for name, v := range r.Values {
				x, ok := v.(float64)
				spec := d.spec.Metrics[name]
				if !ok || spec.Max == spec.Min {
					continue
				}
				if x > spec.Max+0.1*(spec.Max-spec.Min) {
					up++
				}
				if x < spec.Min-0.1*(spec.Max-spec.Min) {
					down++
				}
			}
			if d := time.UnixMilli(r.TS).Sub(p.s.clock.at(p.now)); d > 5*time.Minute+10*time.Second {
				skewed++
			}
		}
	}
	t.Logf("spikes up %d down %d, readings > 5 min ahead %d", up, down, skewed)
	assert.Truef(t, up > 0 && down > 0, "spikes both ways: up %d down %d", up, down)
}

func TestBackhaulLoss(t *testing.T) {
	wall0 := monday.Add(9 * time.Hour)
	// Only backhaul faults, often: every gateway loses its link.
	o := Options{Seed: 3, Faults: true, FaultRates: FaultRates{BackhaulLoss: 0.2}, Start: wall0}
	p := newPureSim(t, o, wall0)
	p.advance(wall0.Add(30*time.Minute), 200*time.Millisecond)
	logs := p.logs.String()
	require.Truef(t, strings.Contains(logs, `"kind":"backhaul_loss"`), "no backhaul loss logged")
	require.Truef(t, strings.Contains(logs, `"msg":"simulated fault ended","kind":"backhaul_loss"`), "no backhaul return logged")
	lost, buffered := strings.Count(logs, `"lose_buffer":true`), strings.Count(logs, `"lose_buffer":false`)
	assert.Truef(t, lost > 0 && buffered > 0, "outages that lose %d, that buffer %d", lost, buffered)
	// A gateway's sensors' readings arrive late in a burst after an outage:
	// some gateway message carries readings older than a minute.
	late := 0
	for _, j := range p.jobs {
		if !strings.HasPrefix(j.topic, "gateways/") {
			continue
		}
		var m map[string][]wireReading
		require.NoError(t, json.Unmarshal(j.payload, &m))
		for _, rs := range m {
			if len(rs) > 3 {
				late++
			}
		}
	}
	assert.Truef(t, late > 0, "no buffered burst after a backhaul loss")
}

func TestSimClock(t *testing.T) {
	w0 := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	c := newSimClock(w0, w0.Add(-24*time.Hour), 288)
	require.Truef(t, c.at(w0).Equal(w0.Add(-24*time.Hour)), "start %v", c.at(w0))
	require.Truef(t, c.at(w0.Add(time.Minute)).Equal(w0.Add(-24*time.Hour+288*time.Minute)), "a minute is 288 minutes: %v", c.at(w0.Add(time.Minute)))
	require.Truef(t, !c.live(w0.Add(5*time.Minute)) && c.speedAt(w0.Add(5*time.Minute)) == 288, "still replaying")
	// 24h behind at 287 h/h gained: caught up after 24h/287.
	up := w0.Add(24 * time.Hour / 287)
	require.Truef(t, c.catchUp.Sub(up).Abs() < time.Millisecond, "catch-up at %v, want %v", c.catchUp, up)
	for _, w := range []time.Time{up, up.Add(time.Second), up.Add(time.Hour)} {
		require.Truef(t, c.at(w).Equal(w) && c.live(w) && c.speedAt(w) == 1, "after catch-up: at(%v) = %v", w, c.at(w))
	}
	// Never ahead of the wall clock.
	for i := range 1000 {
		w := w0.Add(time.Duration(i) * 400 * time.Millisecond)
		require.Truef(t, !c.at(w).After(w), "at %v the clock reads %v", w, c.at(w))
	}
	live := newSimClock(w0, time.Time{}, 1)
	require.Truef(t, live.at(w0.Add(time.Hour)).Equal(w0.Add(time.Hour)) && live.live(w0), "1x is the wall clock")
	behind := newSimClock(w0, w0.Add(-time.Hour), 1)
	require.Truef(t, behind.at(w0.Add(time.Hour)).Equal(w0), "1x from the past stays behind")
}

func TestSpeedupReplaysADay(t *testing.T) {
	wall0 := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC) // a Tuesday
	o := Options{Devices: 6, Seed: 2, Speedup: 1440, Start: wall0.Add(-24 * time.Hour)}
	p := newPureSim(t, o, wall0)
	// A day at 1440x is one minute of wall time; run one and a half.
	p.advance(wall0.Add(90*time.Second), 3*time.Millisecond)
	rs := readingsOf(t, p.jobs)
	var tc []wireReading
	for id, r := range rs {
		if strings.Contains(id, "-tc-") && len(r) > len(tc) {
			tc = r
		}
	}
	require.Truef(t, len(tc) > 1000, "a traffic counter took %d readings in a simulated day (10 s interval)", len(tc))
	first, last := time.UnixMilli(tc[0].TS), time.UnixMilli(tc[len(tc)-1].TS)
	assert.Truef(t, first.Sub(o.Start) < time.Minute, "first reading at %v, start %v", first, o.Start)
	assert.Truef(t, last.After(wall0.Add(55*time.Second)) && !last.After(wall0.Add(90*time.Second)), "last reading at %v: live after catch-up", last)
	// Timestamps never run ahead and step by about the simulated interval.
	byHour := map[int][]float64{}
	regular := 0
	for i, r := range tc {
		ts := time.UnixMilli(r.TS)
		require.Truef(t, !ts.After(wall0.Add(90*time.Second)), "reading from the future: %v", ts)
		if i > 0 {
			d := ts.Sub(time.UnixMilli(tc[i-1].TS))
			// Within the interval's jitter, except the one reading that
			// straddles the catch-up.
			require.Truef(t, d > 0 && d < 15*time.Second, "step %v at %v", d, ts)
			if d > 8*time.Second && d < 12*time.Second {
				regular++
			}
		}
		byHour[ts.In(time.UTC).Hour()] = append(byHour[ts.In(time.UTC).Hour()], r.Values["flow_vph"].(float64))
	}
	assert.Truef(t, float64(regular) > 0.95*float64(len(tc)-1), "%d of %d steps near the 10 s interval", regular, len(tc)-1)
	// The replayed day has its rhythm (Amsterdam is UTC+1 in November):
	// the morning peak (07 UTC) is far above the night (02 UTC).
	assert.Truef(t, avg(byHour[7]) > 3*avg(byHour[2]), "replayed day: 08:00 local %.0f vs 03:00 local %.0f", avg(byHour[7]), avg(byHour[2]))
	// The wall rate is the simulated rate times the speedup while replaying.
	require.Truef(t, p.s.clock.live(p.now), "caught up")
}

func TestSpeedupKeepsWallRate(t *testing.T) {
	f := defaultFleet(t)
	o := Options{Devices: 50, Rate: 100, Speedup: 100, FleetYAML: fleetYAML(t)}.withDefaults()
	_, devs, err := loadFleet(o)
	require.NoError(t, err)
	sim := ReadingsPerSecond(devs)
	assert.Truef(t, math.Abs(sim*o.Speedup-100)/100 < 0.02, "wall rate %.1f, want 100", sim*o.Speedup)
	_ = f
}

func TestValidateStart(t *testing.T) {
	now := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		o    Options
		want string
	}{
		{Options{Start: now.Add(-8 * 24 * time.Hour)}, "more than 7 days ago"},
		{Options{Start: now.Add(time.Hour), Speedup: 10}, "in the future"},
		{Options{Start: now.Add(10 * time.Minute)}, "5 minutes ahead"},
		{Options{Start: now.Add(-24 * time.Hour), Speedup: 100}, ""},
		{Options{}, ""},
	}
	for _, c := range cases {
		err := c.o.withDefaults().validateStart(now)
		if c.want == "" {
			assert.Truef(t, err == nil, "%v: %v", c.o.Start, err)
		} else {
			assert.Truef(t, err != nil && strings.Contains(err.Error(), c.want), "%v: err %v, want %q", c.o.Start, err, c.want)
		}
	}
	got, err := ParseStart("-24h", now)
	assert.Truef(t, err == nil && got.Equal(now.Add(-24*time.Hour)), "-24h: %v %v", got, err)
	got, err = ParseStart("2025-11-24T06:00:00Z", now)
	assert.Truef(t, err == nil && got.Equal(time.Date(2025, 11, 24, 6, 0, 0, 0, time.UTC)), "rfc3339: %v %v", got, err)
	got, err = ParseStart("now", now)
	assert.Truef(t, err == nil && got.IsZero(), "now: %v %v", got, err)
	_, err = ParseStart("yesterday", now)
	assert.Truef(t, err != nil, "yesterday parsed")
}

func TestMultiplex(t *testing.T) {
	f := defaultFleet(t)
	for _, c := range []struct{ devices, max, per int }{{1000, 100, 50}, {10_000, 1000, 500}, {200, 20, 500}, {193, 1000, 500}, {60, 12, 10}} {
		devs, err := f.Build(BuildOptions{Devices: c.devices, Seed: 1})
		require.NoError(t, err)
		out, err := Multiplex(devs, c.max, c.per, time.Second, 1)
		require.NoErrorf(t, err, "multiplex %v", c)
		conns, muxes := 0, 0
		carried := map[string]int{}
		ids := map[string]bool{}
		for _, d := range out {
			require.Truef(t, !ids[d.ID] && idRE.MatchString(d.ID), "id %q", d.ID)
			ids[d.ID] = true
			if d.GatewayID == "" {
				conns++
			} else {
				carried[d.GatewayID]++
			}
			if d.Multiplexer {
				muxes++
				require.Truef(t, d.Type == "gateway" && d.Tags["role"] == "multiplexer" && d.Interval == time.Second, "mux %+v", d)
			}
		}
		require.Truef(t, len(out) == c.devices+muxes, "%v: %d devices out, %d in, %d muxes", c, len(out), c.devices, muxes)
		require.Truef(t, conns <= c.max, "%v: %d connections", c, conns)
		if c.devices > c.max {
			require.Truef(t, muxes > 0 && conns >= c.max-1, "%v: %d connections, %d muxes: the budget is not used", c, conns, muxes)
		}
		for gw, n := range carried {
			if strings.HasPrefix(gw, MuxIDPrefix) {
				require.Truef(t, n <= c.per, "%s carries %d", gw, n)
			}
		}
		for _, d := range out {
			if strings.HasPrefix(d.GatewayID, MuxIDPrefix) {
				require.Truef(t, d.ExpectedInterval >= time.Second, "%s expected %v", d.ID, d.ExpectedInterval)
			}
		}
		t.Logf("%v: %d connections, %d multiplexers", c, conns, muxes)
	}
	devs, _ := f.Build(BuildOptions{Devices: 100})
	_, err := Multiplex(devs, 3, 10, time.Second, 1)
	require.Truef(t, err != nil && strings.Contains(err.Error(), "max_connections"), "err = %v", err)
}

func TestMalform(t *testing.T) {
	good := appendReading(nil, 1764121200123, map[string]any{"flow_vph": 1260.0, "speed_kmh": 54.5, "on": true}, []string{"flow_vph", "on", "speed_kmh"})
	require.Truef(t, string(good) == `{"ts":1764121200123,"values":{"flow_vph":1260,"on":true,"speed_kmh":54.5}}`, "encoded %s", good)
	gw := appendGateway(nil, []gwReading{{"a", good}, {"b", good}, {"a", good}}, map[string][]int{})
	require.Truef(t, string(gw) == `{"a":[`+string(good)+`,`+string(good)+`],"b":[`+string(good)+`]}`, "gateway %s", gw)
	for _, p := range [][]byte{good, gw} {
		for _, f := range malformedForms {
			bad := malform(p, f.form)
			var v any
			err := json.Unmarshal(bad, &v)
			switch f.reason {
			case "malformed_json":
				assert.Truef(t, err != nil, "%s is valid JSON: %s", f.form, bad)
			case "bad_value":
				assert.Truef(t, err == nil && bytes.Contains(bad, []byte(`"flow_vph":"NaN"`)), "%s: %s", f.form, bad)
			case "bad_metric":
				assert.Truef(t, err == nil && bytes.Contains(bad, []byte(`"Flow-vph!":1260`)), "%s: %s", f.form, bad)
			}
		}
		big := oversize(p, p[0] == '{' && bytes.HasPrefix(p, []byte(`{"a"`)), oversizedLimit+10)
		assert.Truef(t, len(big) > oversizedLimit && json.Valid(big), "oversized %d bytes, valid %v", len(big), json.Valid(big))
	}
	require.Truef(t, reflect.DeepEqual(sortedNames(map[string]MetricSpec{"b": {}, "a": {}}), []string{"a", "b"}), "sorted")
}

func TestParseFaultRates(t *testing.T) {
	r, err := ParseFaultRates("spike=0.1, backhaul_loss=0.02", FaultRates{Drift: 0.5})
	require.NoError(t, err)
	assert.Truef(t, r == FaultRates{Spike: 0.1, BackhaulLoss: 0.02, Drift: 0.5}, "rates %+v", r)
	for _, bad := range []string{"spike", "spike=x", "toaster=0.1", "spike=2"} {
		_, err := ParseFaultRates(bad, FaultRates{})
		assert.Truef(t, err != nil && strings.Contains(err.Error(), "fault_rates"), "%q: err %v", bad, err)
	}
	f, err := ParseFleet([]byte("faults: {spike: 0.3, clock_skew: 0.01}\nsites:\n- {id: a, lat: 51, lon: 4, devices: [{type: ups, count: 1}]}\n"))
	require.NoError(t, err)
	assert.Truef(t, f.Faults != nil && *f.Faults == FaultRates{Spike: 0.3, ClockSkew: 0.01}, "fleet faults %+v", f.Faults)
	_, err = ParseFleet([]byte("faults: {spike: 3}\nsites:\n- {id: a, lat: 51, lon: 4}\n"))
	assert.Truef(t, err != nil && strings.Contains(err.Error(), "faults: fault_rates.spike"), "err %v", err)
	// The fleet file's section is used when no rates are given.
	p := newPureSim(t, Options{Faults: true, Devices: 10}, monday)
	assert.Truef(t, p.s.o.FaultRates == *defaultFleet(t).Faults, "rates from the fleet file: %+v", p.s.o.FaultRates)
}

// BenchmarkScheduleEncode measures the scheduler, the models and the encoder
// for a fleet of 10,000 devices at 10,000 readings/s (multiplexed as Run
// would), without a broker: one op is one reading.
func BenchmarkScheduleEncode(b *testing.B) {
	for _, faults := range []bool{false, true} {
		name := "clean"
		if faults {
			name = "faults"
		}
		b.Run(name, func(b *testing.B) {
			wall0 := monday.Add(8 * time.Hour)
			p := newPureSim(b, Options{Devices: 10_000, Rate: 10_000, Seed: 1, Faults: faults, Start: wall0,
				Logger: slog.New(slog.DiscardHandler)}, wall0)
			p.keep = false
			step := 10 * time.Millisecond
			b.ReportAllocs()
			b.ResetTimer()
			start := p.s.stats.readings.Load()
			for p.s.stats.readings.Load()-start < int64(b.N) {
				p.now = p.now.Add(step)
				p.sc.runDue(context.Background(), p.now)
			}
			b.StopTimer()
			b.ReportMetric(float64(p.n)/float64(b.N), "msgs/reading")
		})
	}
}
