package simulators

import (
	"math"
	"time"
)

func init() {
	register("router_link", "rl", newRouterLink)
	register("cell_site", "cell", newCellSite)
	register("ups", "ups", newUPS)
}

// networkDemand is data traffic over the day: office hours and a larger
// evening peak of home streaming.
func networkDemand(h float64, weekend bool) float64 {
	office := 0.35
	if weekend {
		office = 0.12
	}
	return clamp(0.1+office*gauss(h, 11, 2.8)+0.6*gauss(h, 20.5, 2.2), 0, 1)
}

// routerLink is a backbone or access link: utilisation follows the day,
// latency and loss rise as the queue fills near saturation.
// Params: capacity_mbps (default 1000), base_latency_ms (default 4).
type routerLink struct {
	base
	capacity, baseLat, scale float64
	uN, latN                 ar1
}

func newRouterLink(cfg ModelConfig) (Model, error) {
	m := &routerLink{}
	m.base = newBase("router_link", "network", 10*time.Second, cfg, nil)
	m.capacity = m.param("capacity_mbps", 1000)
	m.baseLat = m.param("base_latency_ms", 4)
	m.metrics = map[string]MetricSpec{
		"utilisation_pct": {Unit: "%", Min: 0, Max: 100},
		"throughput_mbps": {Unit: "Mbit/s", Min: 0, Max: m.capacity},
		"latency_ms":      {Unit: "ms", Min: 0, Max: 500},
		"packet_loss_pct": {Unit: "%", Min: 0, Max: 100},
	}
	m.scale = 0.75 + 0.5*m.rng.Float64()
	m.uN = ar1{phi: 0.85, sigma: 0.04}
	m.latN = ar1{phi: 0.5, sigma: 0.08}
	return m, nil
}

func (m *routerLink) Next(t time.Time) map[string]any {
	h, we := m.hour(t)
	u := clamp(networkDemand(h, we)*m.scale+m.uN.step(m.rng), 0.01, 0.995)
	// Queueing delay grows like u/(1-u); loss appears once the link runs hot.
	lat := m.baseLat * (1 + 0.4*u/(1-u)) * (1 + m.latN.step(m.rng))
	loss := 0.005 + 0.01*m.rng.Float64()
	if u > 0.8 {
		loss += 6 * math.Pow((u-0.8)/0.2, 2)
	}
	return map[string]any{
		"utilisation_pct": m.num("utilisation_pct", 100*u, 1),
		"throughput_mbps": m.num("throughput_mbps", m.capacity*u, 1),
		"latency_ms":      m.num("latency_ms", lat, 2),
		"packet_loss_pct": m.num("packet_loss_pct", loss, 3),
	}
}

// cellSite is a mobile base station: users follow the day, and its backhaul
// fails now and then for a few minutes.
// Params: max_users (default 800), backhaul_mtbf_h (default 72).
type cellSite struct {
	base
	maxUsers, mtbf float64
	last           time.Time
	up             bool
	usersN         ar1
}

func newCellSite(cfg ModelConfig) (Model, error) {
	m := &cellSite{up: true}
	m.base = newBase("cell_site", "network", 15*time.Second, cfg, nil)
	m.maxUsers = m.param("max_users", 800)
	m.mtbf = m.param("backhaul_mtbf_h", 72)
	m.metrics = map[string]MetricSpec{
		"connected_users": {Unit: "users", Min: 0, Max: math.Round(m.maxUsers * 1.1)},
		"backhaul_up":     boolSpec,
	}
	m.usersN = ar1{phi: 0.9, sigma: 0.05}
	return m, nil
}

func (m *cellSite) Next(t time.Time) map[string]any {
	dt := elapsed(&m.last, t)
	h, we := m.hour(t)
	if m.up && m.rng.Float64() < 1-math.Exp(-dt/m.mtbf) {
		m.up = false
	} else if !m.up && m.rng.Float64() < 1-math.Exp(-dt*12) { // mean outage 5 min
		m.up = true
	}
	d := clamp(0.06+0.55*gauss(h, 12, 3.5)+0.4*gauss(h, 20, 2.5), 0, 1)
	if we {
		d *= 0.85
	}
	users := m.maxUsers * d * (1 + m.usersN.step(m.rng))
	return map[string]any{
		"connected_users": m.num("connected_users", users, 0),
		"backhaul_up":     m.up,
	}
}

// ups is a battery backup: mains fails now and then; on battery the charge
// drains with the load, back on mains it recharges over a few hours.
// Params: runtime_min (default 45 at full load), mains_mtbf_h (default 48).
type ups struct {
	base
	runtime, mtbf float64
	last          time.Time
	onBattery     bool
	charge        float64
	load          float64
	loadN         ar1
}

func newUPS(cfg ModelConfig) (Model, error) {
	m := &ups{charge: 100}
	m.base = newBase("ups", "network", 30*time.Second, cfg, map[string]MetricSpec{
		"charge_pct": {Unit: "%", Min: 0, Max: 100},
		"on_battery": boolSpec,
		"load_pct":   {Unit: "%", Min: 0, Max: 100},
	})
	m.runtime = m.param("runtime_min", 45) / 60
	m.mtbf = m.param("mains_mtbf_h", 48)
	m.load = 25 + 30*m.rng.Float64()
	m.loadN = ar1{phi: 0.9, sigma: 3}
	return m, nil
}

func (m *ups) Next(t time.Time) map[string]any {
	dt := elapsed(&m.last, t)
	if !m.onBattery && m.rng.Float64() < 1-math.Exp(-dt/m.mtbf) {
		m.onBattery = true
	} else if m.onBattery && m.rng.Float64() < 1-math.Exp(-dt*6) { // mean outage 10 min
		m.onBattery = false
	}
	load := clamp(m.load+m.loadN.step(m.rng), 5, 100)
	if m.onBattery {
		// At full load the battery lasts runtime; at part load proportionally longer.
		m.charge -= 100 * dt * (load / 100) / m.runtime
	} else {
		m.charge += 100 * dt / 4 // four hours from empty to full
	}
	m.charge = clamp(m.charge, 0, 100)
	return map[string]any{
		"charge_pct": round(m.charge, 1),
		"on_battery": m.onBattery,
		"load_pct":   m.num("load_pct", load, 1),
	}
}
