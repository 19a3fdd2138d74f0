package simulators

import (
	"maps"
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// FaultKind names one kind of field fault, as logged in the "kind"
// attribute of a "simulated fault" line.
type FaultKind int

// The fault kinds, one per FaultRates field.
const (
	FaultSpike FaultKind = iota
	FaultStuck
	FaultDrift
	FaultDropout
	FaultOffline
	FaultBackhaulLoss
	FaultClockSkew
	FaultDuplicate
	FaultMalformed
	FaultOversized
	numFaultKinds
)

var faultNames = [numFaultKinds]string{
	"spike", "stuck", "drift", "dropout", "offline", "backhaul_loss", "clock_skew", "duplicate", "malformed", "oversized",
}

// String is the name used in logs and in the fleet file.
func (k FaultKind) String() string {
	if k < 0 || k >= numFaultKinds {
		return "unknown"
	}
	return faultNames[k]
}

// FaultCount is how often a fault kind could have struck and how often it
// did.
type FaultCount struct {
	Chances, Events int64
}

// faultCounters count chances and events per kind; the scheduler writes,
// anyone reads.
type faultCounters [numFaultKinds]struct{ chances, events atomic.Int64 }

func (c *faultCounters) snapshot() map[FaultKind]FaultCount {
	out := make(map[FaultKind]FaultCount, numFaultKinds)
	for k := range numFaultKinds {
		out[k] = FaultCount{Chances: c[k].chances.Load(), Events: c[k].events.Load()}
	}
	return out
}

// faultState is one device's running faults. Times are simulated time.
type faultState struct {
	dropUntil  time.Time
	stuckUntil time.Time
	stuck      map[string]any

	driftMetric  string
	driftStart   time.Time
	driftUntil   time.Time
	driftPerHour float64

	skew      time.Duration
	skewUntil time.Time

	// backhaul is set while a gateway's uplink is down; lose drops its
	// buffer when the link returns (the gateway rebooted).
	backhaul, lose bool
}

// roll reports whether a fault of kind k with probability p strikes d now,
// counting the chance.
func (s *sim) roll(d *simDevice, k FaultKind, p float64) bool {
	s.faultStats[k].chances.Add(1)
	return d.rng.Float64() < p
}

// sample takes the model's reading at simulated time t and applies the
// reading faults. ok is false when the device sends nothing (a dropout).
// The model always advances, so a stateful model does not notice the fault.
func (s *sim) sample(d *simDevice, t time.Time) (map[string]any, bool) {
	values := d.spec.Model.Next(t)
	if !s.o.Faults || d.spec.Multiplexer {
		return values, true
	}
	f := &d.fault
	if t.Before(f.dropUntil) {
		return nil, false
	}
	if t.Before(f.stuckUntil) {
		return maps.Clone(f.stuck), true
	}
	r := s.o.FaultRates
	iv := d.spec.Interval
	// Spike, stuck and dropout exclude each other: one draw decides.
	for _, k := range [...]FaultKind{FaultDropout, FaultStuck, FaultSpike} {
		s.faultStats[k].chances.Add(1)
	}
	draw := d.rng.Float64()
	switch {
	case draw < r.Dropout:
		dur := max(time.Duration((6+24*d.rng.Float64())*float64(iv)), 30*time.Second)
		f.dropUntil = t.Add(dur)
		s.fault(d, FaultDropout, t, "for", dur.Round(time.Second), "expect", "no readings, then stale")
		return nil, false
	case draw < r.Dropout+r.Stuck:
		dur := max(time.Duration((20+40*d.rng.Float64())*float64(iv)), 2*time.Minute)
		f.stuckUntil = t.Add(dur)
		f.stuck = maps.Clone(values)
		s.fault(d, FaultStuck, t, "for", dur.Round(time.Second), "expect", "constant values")
	case draw < r.Dropout+r.Stuck+r.Spike:
		if m, v, dir, ok := spike(d, values); ok {
			values[m] = v
			s.fault(d, FaultSpike, t, "metric", m, "value", v, "direction", dir, "expect", "threshold alert")
		}
	}
	s.drift(d, t, values)
	return values, true
}

// drift starts or continues a calibration drift of one metric.
func (s *sim) drift(d *simDevice, t time.Time, values map[string]any) {
	f := &d.fault
	if f.driftMetric != "" && !t.Before(f.driftUntil) {
		f.driftMetric = "" // recalibrated
	}
	if f.driftMetric == "" {
		if !s.roll(d, FaultDrift, s.o.FaultRates.Drift) {
			return
		}
		names := numericMetrics(d, values)
		if len(names) == 0 {
			return
		}
		name := names[d.rng.IntN(len(names))]
		spec := d.spec.Metrics[name]
		span := math.Max(spec.Max-spec.Min, 1)
		sign := 1.0
		if d.rng.IntN(2) == 0 {
			sign = -1
		}
		dur := time.Duration((2 + 10*d.rng.Float64()) * float64(time.Hour))
		f.driftMetric, f.driftStart, f.driftUntil = name, t, t.Add(dur)
		f.driftPerHour = sign * span * (0.05 + 0.25*d.rng.Float64())
		s.fault(d, FaultDrift, t, "metric", name, "per_hour", round(f.driftPerHour, 3), "for", dur.Round(time.Minute), "expect", "slow departure from neighbours")
	}
	if v, ok := values[f.driftMetric].(float64); ok {
		values[f.driftMetric] = round(v+f.driftPerHour*t.Sub(f.driftStart).Hours(), 3)
	}
}

// timestamp is the time a device stamps on a reading taken at simulated
// time t: t, unless its clock is skewed.
func (s *sim) timestamp(d *simDevice, t time.Time) time.Time {
	if !s.o.Faults || d.spec.Multiplexer {
		return t
	}
	f := &d.fault
	if t.Before(f.skewUntil) {
		return t.Add(f.skew)
	}
	if !s.roll(d, FaultClockSkew, s.o.FaultRates.ClockSkew) {
		return t
	}
	f.skew = time.Duration((10 + 1190*d.rng.Float64()) * float64(time.Second)).Round(time.Second)
	if d.rng.IntN(2) == 0 {
		f.skew = -f.skew
	}
	dur := time.Duration((10 + 50*d.rng.Float64()) * float64(time.Minute))
	f.skewUntil = t.Add(dur)
	expect := "accepted, misplaced in time"
	if f.skew > 5*time.Minute {
		expect = "bad_timestamp"
	}
	s.fault(d, FaultClockSkew, t, "skew", f.skew, "for", dur.Round(time.Second), "expect", expect)
	return t.Add(f.skew)
}

// numericMetrics lists the metrics a value fault may hit: numbers that are
// measurements (not a position or a counter of stops), sorted so that faults
// are reproducible.
func numericMetrics(d *simDevice, values map[string]any) []string {
	var names []string
	for name, v := range values {
		if _, num := v.(float64); num && name != "lat" && name != "lon" && name != "stop_index" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// spike picks a numeric metric and puts it well above or below its normal
// range, as a glitching sensor would.
func spike(d *simDevice, values map[string]any) (string, float64, string, bool) {
	names := numericMetrics(d, values)
	if len(names) == 0 {
		return "", 0, "", false
	}
	name := names[d.rng.IntN(len(names))]
	spec := d.spec.Metrics[name]
	span := spec.Max - spec.Min
	if span <= 0 {
		span = 1
	}
	jump := span * (0.2 + 0.8*d.rng.Float64())
	if d.rng.IntN(2) == 0 {
		return name, round(spec.Min-jump, 2), "down", true
	}
	return name, round(spec.Max+jump, 2), "up", true
}

// fault counts and logs one injected fault. t is the simulated time it
// struck (logged as ts, Unix ms, to find the reading).
func (s *sim) fault(d *simDevice, k FaultKind, t time.Time, attrs ...any) {
	s.stats.faults.Add(1)
	s.faultStats[k].events.Add(1)
	s.log.Info("simulated fault", append([]any{"kind", k.String(), "device_id", d.spec.ID, "ts", t.UnixMilli()}, attrs...)...)
}
