package alerts

import (
	"sort"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Interval is one alert a rule would have raised on past data: from when it
// fired to when it resolved (End zero: still open at the last reading).
type Interval struct {
	DeviceID string    `json:"device_id"`
	Start    time.Time `json:"start"`          // when it fired
	End      time.Time `json:"end,omitzero"`   // when it resolved
	Value    float64   `json:"value"`          // the value that fired it
	Since    time.Time `json:"since,omitzero"` // when the condition began
}

// Backtest replays readings (of any devices, in any order) through the
// same state machine the engine uses and returns the alerts rule would have
// raised, by device and then time. Selector matching is the caller's job:
// every reading given is treated as selected. Between readings time passes
// as the readings say: an absence alert fires `for` after a reading when the
// next one comes later than that.
func Backtest(rule Rule, readings []telemetry.Reading) ([]Interval, error) {
	c, err := compile(rule.withDefaults())
	if err != nil {
		return nil, err
	}
	byDev := map[string][]telemetry.Reading{}
	for _, r := range readings {
		byDev[r.DeviceID] = append(byDev[r.DeviceID], r)
	}
	devs := make([]string, 0, len(byDev))
	for d := range byDev {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	var out []Interval
	for _, d := range devs {
		rs := byDev[d]
		sort.SliceStable(rs, func(i, j int) bool { return rs[i].Time.Before(rs[j].Time) })
		s := &series{rule: c.ID, device: d, hidx: -1}
		var cur *Interval
		step := func(o outcome, t time.Time, v float64) {
			switch o {
			case toFiring:
				out = append(out, Interval{DeviceID: d, Start: t, Value: v, Since: s.activeAt})
				cur = &out[len(out)-1]
			case toResolved:
				if cur != nil {
					cur.End = t
					cur = nil
				}
			}
		}
		for _, r := range rs {
			// Timers first: what would have fired before this reading.
			if due := s.nextDue(c); !due.IsZero() && !due.After(r.Time) {
				v := s.lastV
				if c.Kind == KindAbsence {
					v = due.Sub(s.lastSeen).Seconds()
				}
				step(expire(s, c, due), due, v)
			}
			for _, v := range r.Values {
				if c.Kind == KindAbsence {
					if c.Metric == "" || v.Name == c.Metric {
						step(seen(s, r.Time), r.Time, 0)
						break
					}
					continue
				}
				if v.Name != c.Metric {
					continue
				}
				x := v.Float()
				if c.Kind == KindRate {
					var ok bool
					if x, ok = s.rate(r.Time, x); !ok {
						continue
					}
				}
				step(observe(s, c, r.Time, x), r.Time, x)
			}
		}
	}
	return out, nil
}
