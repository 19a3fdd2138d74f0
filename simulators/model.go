package simulators

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// Model simulates one device. It is deterministic: the same ModelConfig
// (including Seed) and the same sequence of times give the same readings.
// t is simulated time; a Model may keep state between calls (a battery's
// charge, a charging session) and integrates it over the time between calls.
// A Model is not safe for concurrent use.
type Model interface {
	// Type is the device type, the InfluxDB measurement (e.g. traffic_counter).
	Type() string
	// Domain is roads, transport or network.
	Domain() string
	// Metrics names every metric Next returns, with its unit and normal range.
	Metrics() map[string]MetricSpec
	// Interval is the type's natural time between readings, used when the
	// fleet file sets none.
	Interval() time.Duration
	// Next returns the reading at t: float64 or bool values.
	Next(t time.Time) map[string]any
}

// MetricSpec describes one metric: its unit and its normal range. Boolean
// metrics have unit "bool" and the range 0..1.
type MetricSpec struct {
	Unit string  `json:"unit" yaml:"unit"`
	Min  float64 `json:"min" yaml:"min"`
	Max  float64 `json:"max" yaml:"max"`
}

// LatLon is a position in WGS84 degrees.
type LatLon struct {
	Lat float64 `json:"lat" yaml:"lat"`
	Lon float64 `json:"lon" yaml:"lon"`
}

// ModelConfig is what a Model is built from.
type ModelConfig struct {
	// Seed makes the device's behaviour reproducible.
	Seed int64
	// Location is where the device stands.
	Location LatLon
	// Route is the polyline a vehicle drives, from its depot; vehicles only.
	Route []LatLon
	// Params are per-type knobs from the fleet file (e.g. capacity_vph);
	// each model documents its own and defaults the missing ones.
	Params map[string]float64
	// Zone is the local time zone of the daily rhythms; nil means UTC.
	Zone *time.Location
}

// ModelFactory builds a Model of one type.
type ModelFactory func(ModelConfig) (Model, error)

type typeInfo struct {
	factory ModelFactory
	short   string // short form used in generated device ids
}

// registry holds one factory per device type. New types register here (see
// models_*.go); the fleet file may use any registered type.
var registry = map[string]typeInfo{}

func register(typ, short string, f ModelFactory) {
	if _, dup := registry[typ]; dup {
		panic("simulators: duplicate model type " + typ)
	}
	registry[typ] = typeInfo{factory: f, short: short}
}

// NewModel builds a Model of the named type.
func NewModel(typ string, cfg ModelConfig) (Model, error) {
	info, ok := registry[typ]
	if !ok {
		return nil, fmt.Errorf("unknown device type %q (known: %v)", typ, Types())
	}
	if cfg.Zone == nil {
		cfg.Zone = time.UTC
	}
	m, err := info.factory(cfg)
	if err != nil {
		return nil, fmt.Errorf("build %s model: %w", typ, err)
	}
	return m, nil
}

// Types lists the registered device types, sorted.
func Types() []string {
	out := make([]string, 0, len(registry))
	for t := range registry {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// base carries what every model has: identity, metrics, its random source
// and the local zone of its daily rhythm.
type base struct {
	typ, domain string
	interval    time.Duration
	metrics     map[string]MetricSpec
	rng         *rand.Rand
	zone        *time.Location
	params      map[string]float64
}

func newBase(typ, domain string, interval time.Duration, cfg ModelConfig, metrics map[string]MetricSpec) base {
	return base{
		typ: typ, domain: domain, interval: interval, metrics: metrics,
		rng:    newRand(cfg.Seed, typ),
		zone:   cfg.Zone,
		params: cfg.Params,
	}
}

func (b *base) Type() string            { return b.typ }
func (b *base) Domain() string          { return b.domain }
func (b *base) Interval() time.Duration { return b.interval }

// Metrics returns a copy, so callers cannot change the model's ranges.
func (b *base) Metrics() map[string]MetricSpec {
	out := make(map[string]MetricSpec, len(b.metrics))
	for k, v := range b.metrics {
		out[k] = v
	}
	return out
}

// param returns the fleet's value for a knob, or def.
func (b *base) param(name string, def float64) float64 {
	if v, ok := b.params[name]; ok {
		return v
	}
	return def
}

// num clamps v into the metric's range and rounds it for a readable payload.
func (b *base) num(metric string, v float64, decimals int) float64 {
	s := b.metrics[metric]
	return round(clamp(v, s.Min, s.Max), decimals)
}

// hour returns the local time of day in hours and whether it is a weekend.
func (b *base) hour(t time.Time) (float64, bool) {
	lt := t.In(b.zone)
	h := float64(lt.Hour()) + float64(lt.Minute())/60 + float64(lt.Second())/3600
	wd := lt.Weekday()
	return h, wd == time.Saturday || wd == time.Sunday
}

// newRand derives an independent, reproducible source from a seed and a
// label, so two purposes sharing a seed do not share a sequence.
func newRand(seed int64, label string) *rand.Rand {
	h := fnv.New64a()
	_, _ = h.Write([]byte(label))
	return rand.New(rand.NewPCG(uint64(seed), h.Sum64()))
}

// hash01 is a stateless uniform number in [0,1) from a seed and integers;
// models use it for things that must be a pure function of time (a train's
// timetable, a day's weather).
func hash01(seed int64, parts ...int64) float64 {
	x := uint64(seed) ^ 0x9e3779b97f4a7c15
	for _, p := range parts {
		x ^= uint64(p) + 0x9e3779b97f4a7c15 + (x << 6) + (x >> 2)
		x = splitmix(x)
	}
	return float64(x>>11) / (1 << 53)
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// ar1 is smooth noise: each step keeps phi of the last value, so readings
// wander instead of jumping.
type ar1 struct{ x, phi, sigma float64 }

func (a *ar1) step(r *rand.Rand) float64 {
	a.x = a.phi*a.x + a.sigma*math.Sqrt(1-a.phi*a.phi)*r.NormFloat64()
	return a.x
}

func clamp(v, lo, hi float64) float64 {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

func round(v float64, decimals int) float64 {
	p := math.Pow10(decimals)
	return math.Round(v*p) / p
}

// gauss is a bell around mu with width sigma, 1 at its top.
func gauss(x, mu, sigma float64) float64 {
	d := (x - mu) / sigma
	return math.Exp(-d * d / 2)
}

// roadDemand is road traffic as a fraction of capacity over the day:
// morning (7-9) and evening (16-18) peaks on weekdays, a lighter midday
// hump on weekends, little at night.
func roadDemand(h float64, weekend bool) float64 {
	if weekend {
		return clamp(0.05+0.45*gauss(h, 13.5, 3.2)+0.12*gauss(h, 19, 2), 0, 1)
	}
	return clamp(0.04+0.62*gauss(h, 8, 0.85)+0.6*gauss(h, 17, 1.0)+0.34*gauss(h, 12.5, 3.2), 0, 1)
}

// sunshine is 0 at night and rises to 1 around 13:00.
func sunshine(h float64) float64 {
	if h < 7 || h > 19 {
		return 0
	}
	return math.Sin(math.Pi * (h - 7) / 12)
}

// elapsed returns the time since the previous call in hours, capped so a
// long pause does not integrate into absurd jumps, and 0 on the first call.
func elapsed(last *time.Time, t time.Time) float64 {
	if last.IsZero() || !t.After(*last) {
		if last.IsZero() {
			*last = t
		}
		return 0
	}
	dt := t.Sub(*last).Hours()
	*last = t
	return math.Min(dt, 1)
}

// boolSpec is the MetricSpec of a boolean metric.
var boolSpec = MetricSpec{Unit: "bool", Min: 0, Max: 1}
