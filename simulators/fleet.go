package simulators

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"regexp"
	"sort"
	"strings"
	"time"
	_ "time/tzdata" // the fleet's time zone must load on hosts without zoneinfo

	"gopkg.in/yaml.v3"
)

// Fleet is the layout of a simulated city, as read from configs/fleet.yaml.
type Fleet struct {
	// Name of the city, for logs.
	Name string `yaml:"name"`
	// Timezone of the daily rhythms (IANA name); default UTC.
	Timezone string `yaml:"timezone"`
	// Intervals overrides a type's natural interval for the whole fleet.
	Intervals map[string]time.Duration `yaml:"intervals"`
	// Routes are named polylines of [lat, lon] points that buses drive,
	// starting at their depot.
	Routes map[string][][]float64 `yaml:"routes"`
	// Sites are the places devices stand.
	Sites []Site `yaml:"sites"`
	// Faults are the fault rates `--faults` uses when no rates are given
	// on the command line (Options.FaultRates); absent means
	// DefaultFaultRates.
	Faults *FaultRates `yaml:"faults"`
}

// Site is a place in the city: a road corridor, a junction, a depot, an
// exchange.
type Site struct {
	ID   string `yaml:"id"`
	Name string `yaml:"name"`
	// Kind is descriptive (corridor, junction, bridge, depot, exchange, ...)
	// and becomes the site_kind tag.
	Kind string  `yaml:"kind"`
	Lat  float64 `yaml:"lat"`
	Lon  float64 `yaml:"lon"`
	// To is the far end of a corridor; its devices are laid out along it.
	To *LatLon `yaml:"to"`
	// RadiusM scatters the devices of a site without To around its centre
	// (default 250 m).
	RadiusM float64 `yaml:"radius_m"`
	// Devices are the groups of devices at the site.
	Devices []Group `yaml:"devices"`
}

// Group is a number of devices of one type at a site.
type Group struct {
	Type  string `yaml:"type"`
	Count int    `yaml:"count"`
	// Interval overrides the fleet's interval for the type.
	Interval time.Duration `yaml:"interval"`
	// Params are model knobs (see each model's doc).
	Params map[string]float64 `yaml:"params"`
	// ViaGateway: the devices send through the site's gateways instead of
	// connecting to the broker themselves.
	ViaGateway bool `yaml:"via_gateway"`
	// Route names the route of a vehicle.
	Route string `yaml:"route"`
	// Tags are added to the devices' registry tags.
	Tags map[string]string `yaml:"tags"`
}

var (
	idRE     = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	siteIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,40}$`)
)

// ParseFleet decodes and validates a fleet file. Unknown keys are errors, so
// a typo does not silently drop devices.
func ParseFleet(data []byte) (*Fleet, error) {
	var f Fleet
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decode fleet: %w", err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Validate returns every problem of the fleet, each named by its path.
func (f *Fleet) Validate() error {
	var errs []error
	bad := func(path, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, a...)))
	}
	if f.Timezone != "" {
		if _, err := time.LoadLocation(f.Timezone); err != nil {
			bad("timezone", "%v", err)
		}
	}
	for typ, iv := range f.Intervals {
		if _, ok := registry[typ]; !ok {
			bad("intervals."+typ, "unknown device type")
		}
		if iv <= 0 {
			bad("intervals."+typ, "must be positive")
		}
	}
	for name, pts := range f.Routes {
		if len(pts) < 2 {
			bad("routes."+name, "needs at least 2 points")
		}
		for i, p := range pts {
			if len(p) != 2 || !validLatLon(p[0], p[1]) {
				bad(fmt.Sprintf("routes.%s[%d]", name, i), "want [lat, lon]")
			}
		}
	}
	if len(f.Sites) == 0 {
		bad("sites", "no sites")
	}
	if f.Faults != nil {
		for _, err := range f.Faults.validate() {
			errs = append(errs, fmt.Errorf("faults: %w", err))
		}
	}
	seen := map[string]bool{}
	for i, s := range f.Sites {
		p := fmt.Sprintf("sites[%d]", i)
		if !siteIDRE.MatchString(s.ID) {
			bad(p+".id", "%q must match %s", s.ID, siteIDRE)
		}
		if seen[s.ID] {
			bad(p+".id", "duplicate %q", s.ID)
		}
		seen[s.ID] = true
		if !validLatLon(s.Lat, s.Lon) || (s.Lat == 0 && s.Lon == 0) {
			bad(p, "lat/lon missing or out of range")
		}
		if s.To != nil && !validLatLon(s.To.Lat, s.To.Lon) {
			bad(p+".to", "lat/lon out of range")
		}
		if s.RadiusM < 0 {
			bad(p+".radius_m", "negative")
		}
		for j, g := range s.Devices {
			gp := fmt.Sprintf("%s.devices[%d]", p, j)
			if _, ok := registry[g.Type]; !ok {
				bad(gp+".type", "unknown device type %q (known: %s)", g.Type, strings.Join(Types(), ", "))
			}
			if g.Count < 0 {
				bad(gp+".count", "negative")
			}
			if g.Interval < 0 {
				bad(gp+".interval", "negative")
			}
			if g.Type == "gateway" && g.ViaGateway {
				bad(gp+".via_gateway", "a gateway cannot send through a gateway")
			}
			if g.Route != "" {
				if _, ok := f.Routes[g.Route]; !ok {
					bad(gp+".route", "unknown route %q", g.Route)
				}
			}
			if g.Type == "bus" && g.Route == "" {
				bad(gp+".route", "a bus needs a route")
			}
		}
	}
	return errors.Join(errs...)
}

func validLatLon(lat, lon float64) bool {
	return lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180
}

// Total is the number of devices the fleet file lists.
func (f *Fleet) Total() int {
	n := 0
	for _, s := range f.Sites {
		for _, g := range s.Devices {
			n += g.Count
		}
	}
	return n
}

// DeviceSpec is one simulated device: its registry entry and its model.
type DeviceSpec struct {
	ID, Name, Domain, Type, Site string
	Location                     LatLon
	// Interval is how often the device takes a reading.
	Interval time.Duration
	// ExpectedInterval is what the registry is told: for a device behind a
	// gateway, the longer of its own interval and the gateway's, because
	// its readings arrive in the gateway's batches.
	ExpectedInterval time.Duration
	Metrics          map[string]MetricSpec
	Tags             map[string]string
	// GatewayID is the gateway that publishes for the device; empty when the
	// device connects itself.
	GatewayID string
	// Seed is the device's own seed, derived from the fleet seed and its id.
	Seed int64
	// Model produces the readings; it is stateful, one per device.
	Model Model `json:"-"`
	// Multiplexer marks a device the simulator added to carry devices
	// beyond Options.MaxConnections; it is paced in wall time and takes no
	// faults.
	Multiplexer bool
}

// Connects reports whether the device holds its own broker connection.
func (d *DeviceSpec) Connects() bool { return d.GatewayID == "" }

// BuildOptions scale a fleet.
type BuildOptions struct {
	// Devices scales every group's count proportionally so the fleet has
	// this many devices; 0 keeps the file's counts.
	Devices int
	// Rate is the total readings per second; all intervals are scaled by one
	// factor to match it. 0 keeps the intervals.
	Rate float64
	// Seed makes the whole fleet reproducible.
	Seed int64
}

// MinInterval bounds how fast --rate can make one device publish.
const MinInterval = 10 * time.Millisecond

// Build lays out the fleet: scales the counts, places every device, builds
// its model, assigns gateways and scales the intervals to the rate.
func (f *Fleet) Build(o BuildOptions) ([]DeviceSpec, error) {
	if o.Devices < 0 {
		return nil, errors.New("devices: negative")
	}
	if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		return nil, errors.New("rate: must be a finite number >= 0")
	}
	zone := time.UTC
	if f.Timezone != "" {
		z, err := time.LoadLocation(f.Timezone)
		if err != nil {
			return nil, fmt.Errorf("timezone: %w", err)
		}
		zone = z
	}
	counts := f.scaledCounts(o.Devices)

	var out []DeviceSpec
	for si, s := range f.Sites {
		perType := map[string]int{}
		siteTotal := 0
		for gi := range s.Devices {
			siteTotal += counts[si][gi]
		}
		var gateways []int // indexes into out
		var viaGW []int
		placed := 0
		for gi, g := range s.Devices {
			info := registry[g.Type]
			for k := 0; k < counts[si][gi]; k++ {
				perType[g.Type]++
				id := fmt.Sprintf("%s-%s-%02d", s.ID, info.short, perType[g.Type])
				seed := deviceSeed(o.Seed, id)
				loc := placeDevice(s, seed, placed, siteTotal)
				placed++
				cfg := ModelConfig{Seed: seed, Location: loc, Params: g.Params, Zone: zone}
				if g.Route != "" {
					for _, p := range f.Routes[g.Route] {
						cfg.Route = append(cfg.Route, LatLon{Lat: p[0], Lon: p[1]})
					}
					loc = cfg.Route[0]
				}
				m, err := NewModel(g.Type, cfg)
				if err != nil {
					return nil, fmt.Errorf("sites[%d].devices[%d] (%s): %w", si, gi, id, err)
				}
				iv := m.Interval()
				if fi, ok := f.Intervals[g.Type]; ok {
					iv = fi
				}
				if g.Interval > 0 {
					iv = g.Interval
				}
				tags := map[string]string{"simulated": "true"}
				if s.Kind != "" {
					tags["site_kind"] = s.Kind
				}
				if g.Route != "" {
					tags["route"] = g.Route
				}
				for k, v := range g.Tags {
					tags[k] = v
				}
				siteName := s.Name
				if siteName == "" {
					siteName = s.ID
				}
				out = append(out, DeviceSpec{
					ID: id, Name: fmt.Sprintf("%s %d, %s", humanType(g.Type), perType[g.Type], siteName),
					Domain: m.Domain(), Type: g.Type, Site: s.ID, Location: loc,
					Interval: iv, Metrics: m.Metrics(), Tags: tags, Seed: seed, Model: m,
				})
				if g.Type == "gateway" {
					gateways = append(gateways, len(out)-1)
				} else if g.ViaGateway {
					viaGW = append(viaGW, len(out)-1)
				}
			}
		}
		// A scaled-down site may keep sensors but lose its gateway; those
		// sensors then connect themselves, as a sensor with its own modem.
		for k, di := range viaGW {
			if len(gateways) > 0 {
				out[di].GatewayID = out[gateways[k%len(gateways)]].ID
			}
		}
	}
	ids := make(map[string]bool, len(out))
	for _, d := range out {
		if !idRE.MatchString(d.ID) {
			return nil, fmt.Errorf("device id %q does not match %s: shorten the site id", d.ID, idRE)
		}
		if ids[d.ID] {
			return nil, fmt.Errorf("device id %q generated twice: rename a site", d.ID)
		}
		ids[d.ID] = true
	}
	scaleIntervals(out, o.Rate)
	return out, nil
}

// scaledCounts scales every group proportionally to total n with the
// largest-remainder method, so the counts add up to exactly n.
func (f *Fleet) scaledCounts(n int) [][]int {
	total := f.Total()
	counts := make([][]int, len(f.Sites))
	type rem struct {
		si, gi int
		frac   float64
	}
	var rems []rem
	assigned := 0
	for si, s := range f.Sites {
		counts[si] = make([]int, len(s.Devices))
		for gi, g := range s.Devices {
			if n <= 0 || total == 0 {
				counts[si][gi] = g.Count
				continue
			}
			exact := float64(g.Count) * float64(n) / float64(total)
			counts[si][gi] = int(math.Floor(exact))
			assigned += counts[si][gi]
			rems = append(rems, rem{si, gi, exact - math.Floor(exact)})
		}
	}
	if n <= 0 || total == 0 {
		return counts
	}
	sort.SliceStable(rems, func(a, b int) bool { return rems[a].frac > rems[b].frac })
	for i := 0; assigned < n && len(rems) > 0; i++ {
		r := rems[i%len(rems)]
		counts[r.si][r.gi]++
		assigned++
	}
	return counts
}

// scaleIntervals sets ExpectedInterval, then, when rate > 0, scales every
// interval by one factor so that the fleet takes rate readings per second.
func scaleIntervals(devs []DeviceSpec, rate float64) {
	if rate > 0 {
		cur := 0.0
		for _, d := range devs {
			cur += 1 / d.Interval.Seconds()
		}
		if cur > 0 {
			k := cur / rate
			for i := range devs {
				iv := time.Duration(float64(devs[i].Interval) * k)
				devs[i].Interval = max(iv, MinInterval)
			}
		}
	}
	setExpected(devs)
}

// setExpected sets every device's ExpectedInterval: its own interval, or its
// gateway's when that is longer.
func setExpected(devs []DeviceSpec) {
	byID := make(map[string]time.Duration, len(devs))
	for _, d := range devs {
		byID[d.ID] = d.Interval
	}
	for i := range devs {
		devs[i].ExpectedInterval = devs[i].Interval
		if gw := devs[i].GatewayID; gw != "" && byID[gw] > devs[i].Interval {
			devs[i].ExpectedInterval = byID[gw]
		}
	}
}

// MuxIDPrefix starts the id of every multiplexer.
const MuxIDPrefix = "sim-mux-"

// Multiplex keeps the fleet within maxConns MQTT connections. Site gateways
// keep theirs; of the other self-connecting devices as many as fit connect
// themselves (spread evenly over the fleet) and the rest are carried by
// multiplexers, each a device of type gateway (id sim-mux-NNN, tag
// role=multiplexer, at the site of its first device) carrying at most
// perMux devices and publishing every interval (wall time). The broker's
// ACL lets an identity publish only under its own topics, so a carried
// device's readings travel in its multiplexer's gateway messages; the
// registry must know each multiplexer as a device and each carried device
// with gateway_id = its multiplexer (Provision does both). The returned
// slice has the multiplexers appended.
func Multiplex(devs []DeviceSpec, maxConns, perMux int, interval time.Duration, seed int64) ([]DeviceSpec, error) {
	if maxConns <= 0 || perMux <= 0 || interval <= 0 {
		return nil, errors.New("multiplex: max connections, devices per multiplexer and interval must be > 0")
	}
	var cand []int
	gateways := 0
	for i := range devs {
		switch {
		case devs[i].GatewayID != "":
		case devs[i].Type == "gateway":
			gateways++
		default:
			cand = append(cand, i)
		}
	}
	budget := maxConns - gateways
	c := len(cand)
	if c <= budget {
		return devs, nil
	}
	if budget < 1 {
		return nil, fmt.Errorf("max_connections: %d leaves no connection for a multiplexer beside the fleet's %d gateways", maxConns, gateways)
	}
	// direct + multiplexers(direct) must fit the budget.
	direct := budget - 1
	for direct > 0 && direct+ceilDiv(c-direct, perMux) > budget {
		direct--
	}
	muxes := ceilDiv(c-direct, perMux)
	if direct+muxes > budget {
		return nil, fmt.Errorf("max_connections: %d cannot carry %d devices at %d per multiplexer; raise max_connections or mux_devices", maxConns, c, perMux)
	}
	carried := c - direct
	out := devs
	muxIdx := make([]int, muxes)
	j := 0
	for k, i := range cand {
		// Evenly spread direct devices: k is direct when the running share crosses an integer.
		if (k+1)*direct/c > k*direct/c {
			continue
		}
		m := j * muxes / carried
		j++
		if muxIdx[m] == 0 {
			id := fmt.Sprintf("%s%03d", MuxIDPrefix, m+1)
			mseed := deviceSeed(seed, id)
			model, err := NewModel("gateway", ModelConfig{Seed: mseed, Location: devs[i].Location})
			if err != nil {
				return nil, err
			}
			tags := map[string]string{"simulated": "true", "role": "multiplexer"}
			out = append(out, DeviceSpec{
				ID: id, Name: fmt.Sprintf("Simulator multiplexer %d", m+1), Domain: model.Domain(), Type: "gateway",
				Site: devs[i].Site, Location: devs[i].Location, Interval: interval,
				Metrics: model.Metrics(), Tags: tags, Seed: mseed, Model: model, Multiplexer: true,
			})
			muxIdx[m] = len(out) - 1
		}
		out[i].GatewayID = out[muxIdx[m]].ID
	}
	setExpected(out)
	return out, nil
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// ReadingsPerSecond is the fleet's total reading rate.
func ReadingsPerSecond(devs []DeviceSpec) float64 {
	r := 0.0
	for _, d := range devs {
		r += 1 / d.Interval.Seconds()
	}
	return r
}

func deviceSeed(seed int64, id string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return int64(splitmix(uint64(seed) ^ h.Sum64()))
}

// placeDevice spreads a site's devices: evenly along a corridor (with a
// little jitter), else scattered within the site's radius.
func placeDevice(s Site, seed int64, idx, n int) LatLon {
	const mPerDegLat = 111_320.0
	mPerDegLon := mPerDegLat * math.Cos(s.Lat*math.Pi/180)
	if s.To != nil {
		f := (float64(idx) + 0.5) / float64(max(n, 1))
		f = clamp(f+(hash01(seed, 1)-0.5)*0.2/float64(max(n, 1)), 0, 1)
		return LatLon{
			Lat: round(s.Lat+f*(s.To.Lat-s.Lat)+(hash01(seed, 2)-0.5)*30/mPerDegLat, 6),
			Lon: round(s.Lon+f*(s.To.Lon-s.Lon)+(hash01(seed, 3)-0.5)*30/mPerDegLon, 6),
		}
	}
	r := s.RadiusM
	if r == 0 {
		r = 250
	}
	dist := r * math.Sqrt(hash01(seed, 4))
	ang := 2 * math.Pi * hash01(seed, 5)
	return LatLon{
		Lat: round(s.Lat+dist*math.Sin(ang)/mPerDegLat, 6),
		Lon: round(s.Lon+dist*math.Cos(ang)/mPerDegLon, 6),
	}
}

func humanType(t string) string {
	s := strings.ReplaceAll(t, "_", " ")
	switch t {
	case "ups":
		return "UPS"
	case "ev_charger":
		return "EV charger"
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
