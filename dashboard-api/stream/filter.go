package stream

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// MaxFilterValues bounds each list of a subscription.
const MaxFilterValues = 1000

// Filter is a subscription: which devices and which kinds of event a client
// receives. An empty list matches all; several values match any of them.
type Filter struct {
	Domains []string `json:"domains,omitempty"`
	Sites   []string `json:"sites,omitempty"`
	Devices []string `json:"devices,omitempty"`
	// Events lists the event types: reading, status, alert.
	Events []string `json:"events,omitempty"`
	// BBox is [minLon, minLat, maxLon, maxLat] in WGS 84 degrees; nil means
	// everywhere. minLon > maxLon is a box across the antimeridian. Devices
	// without a location never match a box.
	BBox []float64 `json:"bbox,omitempty"`
}

// Validate reports what is wrong with the filter, naming the field.
func (f Filter) Validate() error {
	var errs []error
	for name, list := range map[string][]string{"domains": f.Domains, "sites": f.Sites, "devices": f.Devices, "events": f.Events} {
		if len(list) > MaxFilterValues {
			errs = append(errs, fmt.Errorf("%s: at most %d values, got %d", name, MaxFilterValues, len(list)))
		}
	}
	for _, ev := range f.Events {
		if ev != EventReading && ev != EventStatus && ev != EventAlert {
			errs = append(errs, fmt.Errorf("events: %q is not one of reading, status, alert", ev))
		}
	}
	if f.BBox != nil {
		if len(f.BBox) != 4 {
			errs = append(errs, fmt.Errorf("bbox: want [minLon, minLat, maxLon, maxLat], got %d numbers", len(f.BBox)))
		} else {
			minLon, minLat, maxLon, maxLat := f.BBox[0], f.BBox[1], f.BBox[2], f.BBox[3]
			switch {
			case !inRange(minLon, 180) || !inRange(maxLon, 180):
				errs = append(errs, errors.New("bbox: longitudes must lie in [-180, 180]"))
			case !inRange(minLat, 90) || !inRange(maxLat, 90):
				errs = append(errs, errors.New("bbox: latitudes must lie in [-90, 90]"))
			case minLat > maxLat:
				errs = append(errs, errors.New("bbox: minLat is above maxLat"))
			}
		}
	}
	return errors.Join(errs...)
}

func inRange(v, lim float64) bool { return !math.IsNaN(v) && v >= -lim && v <= lim }

// InBBox reports whether a position lies in the filter's box (true when the
// filter has none). dashboard-api uses it to filter snapshots the same way.
func (f Filter) InBBox(lat, lon float64) bool {
	if len(f.BBox) != 4 {
		return true
	}
	minLon, minLat, maxLon, maxLat := f.BBox[0], f.BBox[1], f.BBox[2], f.BBox[3]
	if lat < minLat || lat > maxLat {
		return false
	}
	if minLon <= maxLon {
		return lon >= minLon && lon <= maxLon
	}
	return lon >= minLon || lon <= maxLon // across the antimeridian
}

// matcher is a validated Filter compiled for the fan-out: sets instead of
// lists, a bit mask of event kinds.
type matcher struct {
	f Filter
	// key is the same for filters that match the same events: clients with
	// equal keys share one fan-out group, so the hub matches, coalesces and
	// frames an interval's events once for all of them.
	key                     string
	domains, sites, devices map[string]struct{} // nil: all
	kinds                   uint8               // bit per kind
}

func set(list []string) map[string]struct{} {
	if len(list) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(list))
	for _, v := range list {
		m[v] = struct{}{}
	}
	return m
}

func compile(f Filter) *matcher {
	m := &matcher{f: f, domains: set(f.Domains), sites: set(f.Sites), devices: set(f.Devices)}
	defer func() { m.key = m.canonical() }()
	if len(f.Events) == 0 {
		m.kinds = 1<<kindReading | 1<<kindStatus | 1<<kindAlert
	}
	for _, ev := range f.Events {
		switch ev {
		case EventReading:
			m.kinds |= 1 << kindReading
		case EventStatus:
			m.kinds |= 1 << kindStatus
		case EventAlert:
			m.kinds |= 1 << kindAlert
		}
	}
	return m
}

func in(s map[string]struct{}, v string) bool {
	if s == nil {
		return true
	}
	_, ok := s[v]
	return ok
}

func (m *matcher) match(e *event) bool {
	p := e.where()
	if m.kinds&(1<<e.kind) == 0 || !in(m.devices, e.deviceID) || !in(m.domains, p.domain) || !in(m.sites, p.site) {
		return false
	}
	if m.f.BBox != nil && (!p.hasLoc || !m.f.InBBox(p.lat, p.lon)) {
		return false
	}
	return true
}

// canonical is the matcher's group key: sorted, deduplicated lists (order
// and repeats do not change what matches), the kind mask and the box.
func (m *matcher) canonical() string {
	var b strings.Builder
	for _, s := range []map[string]struct{}{m.domains, m.sites, m.devices} {
		keys := make([]string, 0, len(s))
		for k := range s {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			b.WriteString(strconv.Quote(k))
			b.WriteByte(',')
		}
		b.WriteByte(';')
	}
	b.WriteString(strconv.Itoa(int(m.kinds)))
	for _, v := range m.f.BBox {
		b.WriteByte(';')
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	}
	return b.String()
}
