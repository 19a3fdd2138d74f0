package simulators

import (
	"errors"
	"fmt"
	"math"
	"time"
)

func init() {
	register("traffic_counter", "tc", newTrafficCounter)
	register("road_weather", "rws", newRoadWeather)
	register("bridge_monitor", "bm", newBridgeMonitor)
	register("gateway", "gw", newGateway)
	register("street_lighting", "sl", newStreetLighting)
}

// trafficCounter is a loop or radar counter on one carriageway with
// several lanes: flow and speed per lane and for the carriageway.
// Params: capacity_vph (default 1800, the carriageway), speed_limit_kmh
// (default 50), lanes (default 2, 1..6).
//
// Lane 1 is the nearside (slow) lane: it carries most of the light night
// traffic and the lorries; as demand grows drivers spread to the outer lanes,
// which run faster until the whole road nears capacity.
type trafficCounter struct {
	base
	capacity, free float64
	lanes          int
	scale          float64 // this segment's share of the city's demand
	noise          ar1
	speedNoise     ar1
	laneNoise      []ar1
	names          []laneNames
}

type laneNames struct{ flow, speed string }

func newTrafficCounter(cfg ModelConfig) (Model, error) {
	m := &trafficCounter{}
	m.base = newBase("traffic_counter", "roads", 10*time.Second, cfg, nil)
	m.capacity = m.param("capacity_vph", 1800)
	m.free = m.param("speed_limit_kmh", 50)
	m.lanes = int(m.param("lanes", 2))
	if m.lanes < 1 || m.lanes > 6 {
		return nil, fmt.Errorf("params.lanes: %d, want 1..6", m.lanes)
	}
	if m.capacity <= 0 || m.free <= 0 {
		return nil, errors.New("params.capacity_vph and speed_limit_kmh must be > 0")
	}
	m.metrics = map[string]MetricSpec{
		"flow_vph":  {Unit: "veh/h", Min: 0, Max: math.Round(m.capacity * 1.15)},
		"speed_kmh": {Unit: "km/h", Min: 0, Max: math.Round(m.free * 1.4)},
	}
	laneCap := m.capacity / float64(m.lanes)
	for l := 1; l <= m.lanes; l++ {
		n := laneNames{flow: fmt.Sprintf("flow_vph_l%d", l), speed: fmt.Sprintf("speed_kmh_l%d", l)}
		m.names = append(m.names, n)
		// A lane may carry a little more than its share of the capacity.
		m.metrics[n.flow] = MetricSpec{Unit: "veh/h", Min: 0, Max: math.Round(laneCap * 1.6)}
		m.metrics[n.speed] = MetricSpec{Unit: "km/h", Min: 0, Max: math.Round(m.free * 1.4)}
		m.laneNoise = append(m.laneNoise, ar1{phi: 0.6, sigma: 0.05})
	}
	m.scale = 0.8 + 0.25*m.rng.Float64()
	m.noise = ar1{phi: 0.8, sigma: 0.06}
	m.speedNoise = ar1{phi: 0.7, sigma: 0.04}
	return m, nil
}

// laneShares splits the flow over the lanes at volume/capacity x: weighted
// to lane 1 when the road is quiet, nearly even near capacity.
func laneShares(lanes int, x float64, dst []float64) {
	sum := 0.0
	for l := range lanes {
		w := math.Exp(-float64(l) * 1.2 * (1 - clamp(x, 0, 1)))
		dst[l] = w
		sum += w
	}
	for l := range lanes {
		dst[l] /= sum
	}
}

func (m *trafficCounter) Next(t time.Time) map[string]any {
	h, we := m.hour(t)
	x := clamp(roadDemand(h, we)*m.scale*(1+m.noise.step(m.rng)), 0, 1.1) // volume/capacity
	common := m.speedNoise.step(m.rng)
	var shares [6]float64
	laneShares(m.lanes, x, shares[:])
	laneCap := m.capacity / float64(m.lanes)
	out := make(map[string]any, 2+2*m.lanes)
	flow, speedSum := 0.0, 0.0
	for l := range m.lanes {
		f := math.Max(0, x*m.capacity*shares[l]*(1+m.laneNoise[l].step(m.rng)))
		xl := f / laneCap
		// Outer lanes run a little faster; every lane slows steeply as its
		// own flow nears the lane's capacity (a BPR-like curve).
		free := m.free * (0.95 + 0.08*float64(l)) * (1.05 + common)
		speed := free / (1 + 1.6*math.Pow(xl, 5))
		f = m.num(m.names[l].flow, f, 0)
		out[m.names[l].flow] = f
		out[m.names[l].speed] = m.num(m.names[l].speed, speed, 1)
		flow += f
		speedSum += speed * f
	}
	speed := m.free * (1.05 + common)
	if flow > 0 {
		speed = speedSum / flow // the space-mean over lanes, weighted by flow
	}
	out["flow_vph"] = m.num("flow_vph", flow, 0)
	out["speed_kmh"] = m.num("speed_kmh", speed, 1)
	return out
}

// roadWeather is a road weather station: air and road surface temperature,
// humidity, and an ice warning when the surface is below zero and moist.
// Params: mean_temp_c (default 3, a winter week), daily_range_c (default 8).
type roadWeather struct {
	base
	seed             int64
	mean, rangeC     float64
	airN, surfN, hum ar1
}

func newRoadWeather(cfg ModelConfig) (Model, error) {
	m := &roadWeather{seed: cfg.Seed}
	m.base = newBase("road_weather", "roads", time.Minute, cfg, map[string]MetricSpec{
		"air_temp_c":     {Unit: "°C", Min: -30, Max: 45},
		"surface_temp_c": {Unit: "°C", Min: -35, Max: 65},
		"humidity_pct":   {Unit: "%", Min: 0, Max: 100},
		"ice_warning":    boolSpec,
	})
	m.mean = m.param("mean_temp_c", 3)
	m.rangeC = m.param("daily_range_c", 8)
	m.airN = ar1{phi: 0.95, sigma: 0.4}
	m.surfN = ar1{phi: 0.9, sigma: 0.3}
	m.hum = ar1{phi: 0.95, sigma: 4}
	return m, nil
}

// dayOffset is the weather of the day: a smooth, seeded wander of a few
// degrees from day to day, a pure function of time.
func (m *roadWeather) dayOffset(t time.Time) float64 {
	days := float64(t.Unix()) / 86400
	d := math.Floor(days)
	f := days - d
	a := 8*hash01(m.seed, int64(d)) - 4
	b := 8*hash01(m.seed, int64(d)+1) - 4
	w := (1 - math.Cos(math.Pi*f)) / 2
	return a*(1-w) + b*w
}

func (m *roadWeather) Next(t time.Time) map[string]any {
	h, _ := m.hour(t)
	// Coldest just before dawn, warmest mid-afternoon.
	air := m.mean + m.dayOffset(t) + m.rangeC/2*math.Cos(2*math.Pi*(h-15)/24) + m.airN.step(m.rng)
	surface := air + 7*sunshine(h) + m.surfN.step(m.rng)
	if sunshine(h) == 0 {
		surface -= 2.5 // a clear night cools the road below the air
	}
	hum := clamp(78+14*math.Cos(2*math.Pi*(h-5)/24)+m.hum.step(m.rng), 20, 100)
	surface = m.num("surface_temp_c", surface, 1)
	return map[string]any{
		"air_temp_c":     m.num("air_temp_c", air, 1),
		"surface_temp_c": surface,
		"humidity_pct":   m.num("humidity_pct", hum, 0),
		"ice_warning":    surface < 0 && hum >= 85,
	}
}

// bridgeMonitor is a strain gauge and accelerometer on a bridge deck: strain
// follows the traffic on it, heavy lorries add short peaks.
// Params: dead_load_ue (default 150).
type bridgeMonitor struct {
	base
	dead, scale float64
	strainN     ar1
	vibN        ar1
	tiltN       ar1
	tilt0       float64 // the pier's settled inclination
}

func newBridgeMonitor(cfg ModelConfig) (Model, error) {
	m := &bridgeMonitor{}
	m.base = newBase("bridge_monitor", "roads", 5*time.Second, cfg, map[string]MetricSpec{
		"strain_ue":      {Unit: "µε", Min: 0, Max: 800},
		"vibration_mm_s": {Unit: "mm/s", Min: 0, Max: 12},
		"tilt_mrad":      {Unit: "mrad", Min: -5, Max: 5},
	})
	m.dead = m.param("dead_load_ue", 150)
	m.scale = 0.85 + 0.3*m.rng.Float64()
	m.strainN = ar1{phi: 0.6, sigma: 8}
	m.vibN = ar1{phi: 0.5, sigma: 0.15}
	m.tiltN = ar1{phi: 0.95, sigma: 0.02}
	m.tilt0 = 0.6*m.rng.Float64() - 0.3
	return m, nil
}

func (m *bridgeMonitor) Next(t time.Time) map[string]any {
	h, we := m.hour(t)
	d := roadDemand(h, we) * m.scale
	strain := m.dead + 280*d + m.strainN.step(m.rng)
	vib := 0.2 + 2.8*d + m.vibN.step(m.rng)
	if m.rng.Float64() < 0.12*d { // a lorry on the span
		strain += 60 + 120*m.rng.Float64()
		vib += 1 + 2.5*m.rng.Float64()
	}
	// The deck tilts with the sun on it (thermal bowing, warmest in the
	// afternoon) and a little under load.
	tilt := m.tilt0 + 0.35*math.Cos(2*math.Pi*(h-15)/24) + 0.25*d + m.tiltN.step(m.rng)
	return map[string]any{
		"strain_ue":      m.num("strain_ue", strain, 1),
		"vibration_mm_s": m.num("vibration_mm_s", vib, 2),
		"tilt_mrad":      m.num("tilt_mrad", tilt, 3),
	}
}

// gatewayModel is a roadside gateway's own health: enclosure temperature
// (sun on the cabinet) and cellular signal.
type gatewayModel struct {
	base
	tempN, sigN ar1
	signal      float64
}

func newGateway(cfg ModelConfig) (Model, error) {
	m := &gatewayModel{}
	m.base = newBase("gateway", "roads", 10*time.Second, cfg, map[string]MetricSpec{
		"cpu_temp_c": {Unit: "°C", Min: -20, Max: 95},
		"signal_dbm": {Unit: "dBm", Min: -120, Max: -40},
	})
	m.signal = -95 + 30*m.rng.Float64()
	m.tempN = ar1{phi: 0.9, sigma: 1}
	m.sigN = ar1{phi: 0.8, sigma: 2}
	return m, nil
}

func (m *gatewayModel) Next(t time.Time) map[string]any {
	h, _ := m.hour(t)
	return map[string]any{
		"cpu_temp_c": m.num("cpu_temp_c", 38+14*sunshine(h)+m.tempN.step(m.rng), 1),
		"signal_dbm": m.num("signal_dbm", m.signal+m.sigN.step(m.rng), 0),
	}
}

// streetLighting is a street lighting cabinet feeding a circuit of lamps:
// on from dusk to dawn (sunset and sunrise follow the date and latitude),
// dimmed in the small hours, with lamps failing now and then until a crew
// replaces them.
// Params: lamps (default 40), lamp_w (default 90), dim_pct (default 50).
type streetLighting struct {
	base
	lat           float64
	lamps, lampW  float64
	dim           float64
	failed        float64
	last          time.Time
	voltN, powerN ar1
}

func newStreetLighting(cfg ModelConfig) (Model, error) {
	m := &streetLighting{lat: cfg.Location.Lat}
	m.base = newBase("street_lighting", "roads", time.Minute, cfg, nil)
	m.lamps = math.Round(m.param("lamps", 40))
	m.lampW = m.param("lamp_w", 90)
	m.dim = m.param("dim_pct", 50) / 100
	if m.lamps < 1 || m.lampW <= 0 {
		return nil, errors.New("params.lamps and lamp_w must be > 0")
	}
	m.metrics = map[string]MetricSpec{
		"power_kw":     {Unit: "kW", Min: 0, Max: round(m.lamps*m.lampW*1.1/1000+0.05, 2)},
		"lamps_on":     boolSpec,
		"lamps_failed": {Unit: "lamps", Min: 0, Max: m.lamps},
		"voltage_v":    {Unit: "V", Min: 200, Max: 253},
	}
	m.voltN = ar1{phi: 0.9, sigma: 2}
	m.powerN = ar1{phi: 0.8, sigma: 0.01}
	return m, nil
}

// daylight returns the local hours of sunrise and sunset at latitude lat on
// t's date (a textbook declination formula; minutes matter little here).
func daylight(t time.Time, lat float64) (rise, set float64) {
	doy := float64(t.YearDay())
	decl := -23.44 * math.Cos(2*math.Pi*(doy+10)/365) * math.Pi / 180
	cosH := -math.Tan(lat*math.Pi/180) * math.Tan(decl)
	cosH = clamp(cosH, -1, 1)
	half := math.Acos(cosH) * 12 / math.Pi // half the day length, hours
	// Solar noon is ~13:00 local on a central European clock; close enough
	// for lamps, which switch on a photocell anyway.
	return 13 - half, 13 + half
}

func (m *streetLighting) Next(t time.Time) map[string]any {
	dt := elapsed(&m.last, t)
	lt := t.In(m.zone)
	h, _ := m.hour(t)
	rise, set := daylight(lt, m.lat)
	// The photocell switches a little after sunset and before sunrise.
	on := h >= set+0.25 || h < rise-0.25
	// A lamp fails every ~200 days; a crew replaces the failed ones after a
	// week on average.
	if m.rng.Float64() < 1-math.Exp(-dt*m.lamps/(200*24)) && m.failed < m.lamps {
		m.failed++
	}
	if m.failed > 0 && m.rng.Float64() < 1-math.Exp(-dt/(7*24)) {
		m.failed = 0
	}
	power := 0.02 + m.powerN.step(m.rng)*0.01 // the controller and meter
	if on {
		level := 1.0
		if h >= 0 && h < 5 {
			level = m.dim
		}
		power += (m.lamps - m.failed) * m.lampW * level / 1000 * (1 + m.powerN.x)
	}
	return map[string]any{
		"power_kw":     m.num("power_kw", power, 2),
		"lamps_on":     on,
		"lamps_failed": m.failed,
		"voltage_v":    m.num("voltage_v", 231+m.voltN.step(m.rng), 1),
	}
}
