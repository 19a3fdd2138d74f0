package simulators

import (
	"math"
	"time"
)

func init() {
	register("traffic_counter", "tc", newTrafficCounter)
	register("road_weather", "rws", newRoadWeather)
	register("bridge_monitor", "bm", newBridgeMonitor)
	register("gateway", "gw", newGateway)
}

// trafficCounter is an induction loop on one road segment.
// Params: capacity_vph (default 1800), speed_limit_kmh (default 50).
type trafficCounter struct {
	base
	capacity, free float64
	scale          float64 // this segment's share of the city's demand
	noise          ar1
	speedNoise     ar1
}

func newTrafficCounter(cfg ModelConfig) (Model, error) {
	m := &trafficCounter{}
	m.base = newBase("traffic_counter", "roads", 10*time.Second, cfg, nil)
	m.capacity = m.param("capacity_vph", 1800)
	m.free = m.param("speed_limit_kmh", 50)
	m.metrics = map[string]MetricSpec{
		"flow_vph":  {Unit: "veh/h", Min: 0, Max: math.Round(m.capacity * 1.15)},
		"speed_kmh": {Unit: "km/h", Min: 0, Max: math.Round(m.free * 1.3)},
	}
	m.scale = 0.8 + 0.25*m.rng.Float64()
	m.noise = ar1{phi: 0.8, sigma: 0.06}
	m.speedNoise = ar1{phi: 0.7, sigma: 0.04}
	return m, nil
}

func (m *trafficCounter) Next(t time.Time) map[string]any {
	h, we := m.hour(t)
	x := clamp(roadDemand(h, we)*m.scale*(1+m.noise.step(m.rng)), 0, 1.1) // volume/capacity
	// Speed falls steeply as flow nears capacity (a BPR-like curve).
	speed := m.free * (1.05 + m.speedNoise.step(m.rng)) / (1 + 1.6*math.Pow(x, 5))
	return map[string]any{
		"flow_vph":  m.num("flow_vph", x*m.capacity, 0),
		"speed_kmh": m.num("speed_kmh", speed, 1),
	}
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
}

func newBridgeMonitor(cfg ModelConfig) (Model, error) {
	m := &bridgeMonitor{}
	m.base = newBase("bridge_monitor", "roads", 5*time.Second, cfg, map[string]MetricSpec{
		"strain_ue":      {Unit: "µε", Min: 0, Max: 800},
		"vibration_mm_s": {Unit: "mm/s", Min: 0, Max: 12},
	})
	m.dead = m.param("dead_load_ue", 150)
	m.scale = 0.85 + 0.3*m.rng.Float64()
	m.strainN = ar1{phi: 0.6, sigma: 8}
	m.vibN = ar1{phi: 0.5, sigma: 0.15}
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
	return map[string]any{
		"strain_ue":      m.num("strain_ue", strain, 1),
		"vibration_mm_s": m.num("vibration_mm_s", vib, 2),
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
