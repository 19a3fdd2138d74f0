package simulators

import (
	"errors"
	"math"
	"time"
)

func init() {
	register("bus", "bus", newBus)
	register("level_crossing", "lc", newLevelCrossing)
	register("ev_charger", "evc", newEVCharger)
	register("passenger_counter", "pc", newPassengerCounter)
}

// bus drives its route out and back from the depot (the route's first
// point) between 05:00 and 01:00, stopping at stops spaced along the route,
// fuller and later in the peaks.
// Params: speed_kmh (default 22, average including stops), layover_min
// (default 5), stop_spacing_m (default 400), dwell_s (default 20).
type bus struct {
	base
	route    []LatLon
	cum      []float64 // distance from the start to each point, km
	total    float64   // route length, km
	stops    int       // stops after the first: the route has stops+1
	segT     float64   // seconds from one stop to the next, dwell included
	dwell    float64
	cruise   float64 // km/h between stops
	period   float64 // seconds for a round trip
	layover  float64
	phase    float64
	occN     ar1
	delayN   ar1
	occScale float64
}

func newBus(cfg ModelConfig) (Model, error) {
	if len(cfg.Route) < 2 {
		return nil, errors.New("a bus needs a route of at least 2 points")
	}
	m := &bus{route: cfg.Route}
	lo, hi := bbox(cfg.Route)
	m.base = newBase("bus", "transport", 5*time.Second, cfg, nil)
	m.cum = make([]float64, len(cfg.Route))
	for i := 1; i < len(cfg.Route); i++ {
		m.cum[i] = m.cum[i-1] + distanceKm(cfg.Route[i-1], cfg.Route[i])
	}
	m.total = m.cum[len(m.cum)-1]
	if m.total <= 0 {
		return nil, errors.New("the route has no length")
	}
	avg := m.param("speed_kmh", 22)
	spacing := m.param("stop_spacing_m", 400) / 1000
	m.dwell = m.param("dwell_s", 20)
	if avg <= 0 || spacing <= 0 || m.dwell < 0 {
		return nil, errors.New("params.speed_kmh and stop_spacing_m must be > 0, dwell_s >= 0")
	}
	m.stops = max(1, int(math.Round(m.total/spacing)))
	oneWay := m.total / avg * 3600
	m.segT = oneWay / float64(m.stops)
	if m.segT <= m.dwell+1 {
		m.dwell = m.segT / 3 // stops too close for the dwell: shorten it
	}
	m.cruise = m.total / float64(m.stops) / ((m.segT - m.dwell) / 3600)
	m.metrics = map[string]MetricSpec{
		"lat":           {Unit: "°", Min: round(lo.Lat-0.01, 4), Max: round(hi.Lat+0.01, 4)},
		"lon":           {Unit: "°", Min: round(lo.Lon-0.01, 4), Max: round(hi.Lon+0.01, 4)},
		"occupancy_pct": {Unit: "%", Min: 0, Max: 100},
		"delay_s":       {Unit: "s", Min: -120, Max: 1200},
		"speed_kmh":     {Unit: "km/h", Min: 0, Max: math.Ceil(m.cruise * 1.2)},
		"stop_index":    {Unit: "stop", Min: 0, Max: float64(m.stops)},
		"at_stop":       boolSpec,
	}
	m.layover = m.param("layover_min", 5) * 60
	m.period = 2 * (oneWay + m.layover)
	m.phase = m.rng.Float64() * m.period // buses of a line are spread over it
	m.occScale = 0.8 + 0.3*m.rng.Float64()
	m.occN = ar1{phi: 0.9, sigma: 6}
	m.delayN = ar1{phi: 0.95, sigma: 25}
	return m, nil
}

func (m *bus) Next(t time.Time) map[string]any {
	h, we := m.hour(t)
	if h >= 1 && h < 5 { // in the depot overnight
		return map[string]any{
			"lat": m.route[0].Lat, "lon": m.route[0].Lon,
			"occupancy_pct": 0.0, "delay_s": 0.0, "speed_kmh": 0.0,
			"stop_index": 0.0, "at_stop": false,
		}
	}
	d := roadDemand(h, we)
	// Delay grows with the square of congestion: little off-peak, minutes in the peaks.
	delay := 420*d*d + m.delayN.step(m.rng)
	occ := (8 + 85*d) * m.occScale
	pos := m.position(float64(t.Unix()) - delay)
	if pos.atTerminus {
		occ *= 0.3 // most passengers got off
	}
	occ += m.occN.step(m.rng)
	speed := 0.0
	if pos.moving {
		// Slower in congestion, the timetable's delay shows it.
		speed = m.cruise * (1.1 - 0.35*d)
	}
	return map[string]any{
		"lat":           round(pos.p.Lat, 6),
		"lon":           round(pos.p.Lon, 6),
		"occupancy_pct": m.num("occupancy_pct", occ, 0),
		"delay_s":       m.num("delay_s", delay, 0),
		"speed_kmh":     m.num("speed_kmh", speed, 1),
		"stop_index":    float64(pos.stop),
		"at_stop":       pos.atStop,
	}
}

type busPos struct {
	p                          LatLon
	stop                       int // the last stop reached, counted from the depot end
	atStop, atTerminus, moving bool
}

// position is where the timetable puts the bus at second sec: out, layover,
// back, layover; on each leg it dwells at every stop, then drives to the
// next.
func (m *bus) position(sec float64) busPos {
	oneWay := m.period/2 - m.layover
	x := math.Mod(sec+m.phase, m.period)
	if x < 0 {
		x += m.period
	}
	var out busPos
	var leg float64 // seconds into the current leg
	back := false
	switch {
	case x < oneWay:
		leg = x
	case x < oneWay+m.layover:
		out.stop, out.atStop, out.atTerminus = m.stops, true, true
		out.p = m.along(m.total)
		return out
	case x < 2*oneWay+m.layover:
		leg, back = x-oneWay-m.layover, true
	default:
		out.atStop, out.atTerminus = true, true
		out.p = m.route[0]
		return out
	}
	k := min(int(leg/m.segT), m.stops-1) // the stop the bus left or dwells at
	in := leg - float64(k)*m.segT
	frac := 0.0 // of the way from stop k to stop k+1
	if in < m.dwell {
		out.atStop = true
	} else {
		frac = clamp((in-m.dwell)/(m.segT-m.dwell), 0, 1)
		out.moving = true
	}
	dist := (float64(k) + frac) * m.total / float64(m.stops)
	out.stop = k
	if back {
		dist = m.total - dist
		out.stop = m.stops - k
	}
	out.p = m.along(dist)
	return out
}

// along interpolates the point at dist km from the route's start.
func (m *bus) along(dist float64) LatLon {
	for i := 1; i < len(m.cum); i++ {
		if dist <= m.cum[i] || i == len(m.cum)-1 {
			seg := m.cum[i] - m.cum[i-1]
			f := 0.0
			if seg > 0 {
				f = clamp((dist-m.cum[i-1])/seg, 0, 1)
			}
			a, b := m.route[i-1], m.route[i]
			return LatLon{Lat: a.Lat + f*(b.Lat-a.Lat), Lon: a.Lon + f*(b.Lon-a.Lon)}
		}
	}
	return m.route[0]
}

// levelCrossing is a rail level crossing. Its timetable is a pure function
// of time: every 7.5-minute slot may carry a train (always in the peaks,
// half of them off-peak, few at night) that closes the barriers for 45-135 s.
type levelCrossing struct {
	base
	seed int64
}

const crossingSlot = int64(450) // seconds

func newLevelCrossing(cfg ModelConfig) (Model, error) {
	m := &levelCrossing{seed: cfg.Seed}
	m.base = newBase("level_crossing", "transport", 5*time.Second, cfg, map[string]MetricSpec{
		"barrier_down": boolSpec,
		"closure_s":    {Unit: "s", Min: 0, Max: 300},
	})
	return m, nil
}

// closure returns the start (unix s) and length of the slot's closure, if it
// has a train.
func (m *levelCrossing) closure(slot int64) (start, length int64, ok bool) {
	st := time.Unix(slot*crossingSlot, 0)
	h, we := m.hour(st)
	p := 0.5
	switch {
	case h < 5:
		p = 0.08
	case !we && ((h >= 7 && h < 9) || (h >= 16 && h < 18)):
		p = 1
	}
	if hash01(m.seed, slot, 1) >= p {
		return 0, 0, false
	}
	length = 45 + int64(90*hash01(m.seed, slot, 2))
	if hash01(m.seed, slot, 3) < 0.08 { // two trains back to back
		length += 90
	}
	start = slot*crossingSlot + int64(float64(crossingSlot-length)*hash01(m.seed, slot, 4))
	return start, length, true
}

func (m *levelCrossing) Next(t time.Time) map[string]any {
	now := t.Unix()
	slot := now / crossingSlot
	// closure_s is the time closed so far while down, else the last closure's length.
	for s := slot; s > slot-40; s-- {
		start, length, ok := m.closure(s)
		if !ok || start > now {
			continue
		}
		if now < start+length {
			return map[string]any{"barrier_down": true, "closure_s": m.num("closure_s", float64(now-start), 0)}
		}
		return map[string]any{"barrier_down": false, "closure_s": m.num("closure_s", float64(length), 0)}
	}
	return map[string]any{"barrier_down": false, "closure_s": 0.0}
}

// evCharger is a public charge point: cars arrive more in the morning and
// evening, charge at full power, then taper as the battery fills.
// Params: max_kw (default 22; 150 for a DC fast charger).
type evCharger struct {
	base
	maxKW          float64
	last           time.Time
	active         bool
	energy, target float64 // kWh delivered and wanted this session
	powN           ar1
}

func newEVCharger(cfg ModelConfig) (Model, error) {
	m := &evCharger{}
	m.base = newBase("ev_charger", "transport", 15*time.Second, cfg, nil)
	m.maxKW = m.param("max_kw", 22)
	m.metrics = map[string]MetricSpec{
		"power_kw":       {Unit: "kW", Min: 0, Max: math.Round(m.maxKW * 1.05)},
		"session_active": boolSpec,
		"energy_kwh":     {Unit: "kWh", Min: 0, Max: 120},
	}
	m.powN = ar1{phi: 0.7, sigma: 0.02}
	return m, nil
}

func (m *evCharger) Next(t time.Time) map[string]any {
	dt := elapsed(&m.last, t)
	h, _ := m.hour(t)
	power := 0.0
	if !m.active {
		arrivals := 0.15 + 0.9*gauss(h, 9, 1.5) + 0.8*gauss(h, 18.5, 2) // per hour
		if dt > 0 && m.rng.Float64() < 1-math.Exp(-arrivals*dt) {
			m.active, m.energy = true, 0
			m.target = math.Min(8+52*m.rng.Float64(), 110)
		}
	}
	if m.active {
		progress := m.energy / m.target
		taper := 1.0
		if progress > 0.8 { // constant current, then constant voltage
			taper = math.Max(0.1, 1-(progress-0.8)/0.2*0.9)
		}
		power = m.maxKW * taper * (0.97 + m.powN.step(m.rng))
		m.energy += power * dt
		// Some drivers leave before the battery is full.
		if m.energy >= m.target || (dt > 0 && m.rng.Float64() < 1-math.Exp(-0.15*dt)) {
			m.active, power = false, 0
		}
	}
	return map[string]any{
		"power_kw":       m.num("power_kw", power, 1),
		"session_active": m.active,
		"energy_kwh":     m.num("energy_kwh", m.energy, 2),
	}
}

func bbox(pts []LatLon) (lo, hi LatLon) {
	lo, hi = pts[0], pts[0]
	for _, p := range pts[1:] {
		lo.Lat, lo.Lon = math.Min(lo.Lat, p.Lat), math.Min(lo.Lon, p.Lon)
		hi.Lat, hi.Lon = math.Max(hi.Lat, p.Lat), math.Max(hi.Lon, p.Lon)
	}
	return lo, hi
}

// distanceKm is the great-circle distance.
func distanceKm(a, b LatLon) float64 {
	const r = 6371.0
	rad := math.Pi / 180
	dLat := (b.Lat - a.Lat) * rad
	dLon := (b.Lon - a.Lon) * rad
	s := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(a.Lat*rad)*math.Cos(b.Lat*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * r * math.Asin(math.Sqrt(s))
}

// passengerCounter counts people through a station's ticket gates: entries
// and exits per minute. A residential station fills the morning with
// entries and the evening with exits; a city-centre one the other way
// round. Params: gates (default 8), peak_per_min (default 120, both
// directions at the busiest minute), residential (0..1, default 0.6).
type passengerCounter struct {
	base
	gates, peak, res float64
	inN, outN        ar1
	last             time.Time
	outOfService     float64
}

func newPassengerCounter(cfg ModelConfig) (Model, error) {
	m := &passengerCounter{}
	m.base = newBase("passenger_counter", "transport", 30*time.Second, cfg, nil)
	m.gates = math.Round(m.param("gates", 8))
	m.peak = m.param("peak_per_min", 120)
	m.res = clamp(m.param("residential", 0.6), 0, 1)
	if m.gates < 1 || m.peak <= 0 {
		return nil, errors.New("params.gates and peak_per_min must be > 0")
	}
	m.metrics = map[string]MetricSpec{
		"entries_per_min":  {Unit: "pax/min", Min: 0, Max: math.Round(m.peak * 1.5)},
		"exits_per_min":    {Unit: "pax/min", Min: 0, Max: math.Round(m.peak * 1.5)},
		"gates_in_service": {Unit: "gates", Min: 0, Max: m.gates},
	}
	m.inN = ar1{phi: 0.7, sigma: 0.12}
	m.outN = ar1{phi: 0.7, sigma: 0.12}
	return m, nil
}

func (m *passengerCounter) Next(t time.Time) map[string]any {
	dt := elapsed(&m.last, t)
	h, we := m.hour(t)
	closed := h >= 1 && h < 5 // no trains: the gates count nobody
	var morning, evening, base float64
	if we {
		base = 0.08 + 0.3*gauss(h, 14, 3.5)
	} else {
		base = 0.06 + 0.2*gauss(h, 12.5, 3)
		morning, evening = gauss(h, 8, 0.8), gauss(h, 17.2, 1)
	}
	in := base + m.res*morning + (1-m.res)*evening
	out := base + (1-m.res)*morning + m.res*evening
	// A gate jams now and then (every ~10 days each) until a fitter comes (~4 h).
	if m.rng.Float64() < 1-math.Exp(-dt*m.gates/240) && m.outOfService < m.gates-1 {
		m.outOfService++
	}
	if m.outOfService > 0 && m.rng.Float64() < 1-math.Exp(-dt/4) {
		m.outOfService--
	}
	entries := m.peak * in * (1 + m.inN.step(m.rng))
	exits := m.peak * out * (1 + m.outN.step(m.rng))
	if closed {
		entries, exits = 0, 0
	}
	return map[string]any{
		"entries_per_min":  m.num("entries_per_min", entries, 0),
		"exits_per_min":    m.num("exits_per_min", exits, 0),
		"gates_in_service": m.gates - m.outOfService,
	}
}
