package simulators

import (
	"maps"
	"slices"
	"time"
)

// faultState is one device's running faults.
type faultState struct {
	dropUntil  time.Time
	stuckUntil time.Time
	stuck      map[string]any
}

// sample takes the model's reading at now and applies faults. ok is false
// when the device sends nothing (a dropout). The model always advances, so a
// stateful model does not notice the fault.
func (s *sim) sample(d *simDevice, now time.Time) (map[string]any, bool) {
	values := d.spec.Model.Next(now)
	if !s.o.Faults {
		return values, true
	}
	f := &d.fault
	if now.Before(f.dropUntil) {
		return nil, false
	}
	if now.Before(f.stuckUntil) {
		return maps.Clone(f.stuck), true
	}
	r := s.o.FaultRates
	roll := d.rng.Float64()
	iv := d.spec.Interval
	switch {
	case roll < r.Dropout:
		dur := max(time.Duration((6+24*d.rng.Float64())*float64(iv)), 30*time.Second)
		f.dropUntil = now.Add(dur)
		s.fault(d, "dropout", "for", dur.Round(time.Second))
		return nil, false
	case roll < r.Dropout+r.Stuck:
		dur := max(time.Duration((20+40*d.rng.Float64())*float64(iv)), 2*time.Minute)
		f.stuckUntil = now.Add(dur)
		f.stuck = maps.Clone(values)
		s.fault(d, "stuck", "for", dur.Round(time.Second))
	case roll < r.Dropout+r.Stuck+r.Spike:
		if m, v, ok := spike(d, values); ok {
			values[m] = v
			s.fault(d, "spike", "metric", m, "value", v)
		}
	}
	return values, true
}

// spike picks a numeric metric (not a position) and puts it well above its
// normal range, as a glitching sensor would.
func spike(d *simDevice, values map[string]any) (string, float64, bool) {
	var names []string
	for name, v := range values {
		if _, num := v.(float64); num && name != "lat" && name != "lon" {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "", 0, false
	}
	slices.Sort(names) // map order is random; keep faults reproducible
	name := names[d.rng.IntN(len(names))]
	spec := d.spec.Metrics[name]
	span := spec.Max - spec.Min
	if span <= 0 {
		span = 1
	}
	return name, round(spec.Max+span*(0.2+0.8*d.rng.Float64()), 2), true
}

// fault counts and logs one injected fault.
func (s *sim) fault(d *simDevice, kind string, attrs ...any) {
	s.stats.faults.Add(1)
	s.log.Info("simulated fault", append([]any{"kind", kind, "device_id", d.spec.ID}, attrs...)...)
}
