package alerts

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// t0 is the start of every scenario's timeline.
var t0 = time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// registry is a fixed device registry.
type registry struct {
	mu   sync.Mutex
	devs map[string]*telemetry.Device
}

func newRegistry(devs ...*telemetry.Device) *registry {
	r := &registry{devs: map[string]*telemetry.Device{}}
	for _, d := range devs {
		r.devs[d.ID] = d
	}
	return r
}

func (r *registry) add(d *telemetry.Device) {
	r.mu.Lock()
	r.devs[d.ID] = d
	r.mu.Unlock()
}

func (r *registry) lookup(id string) (*telemetry.Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.devs[id]
	return d, ok
}

func (r *registry) byGateway(gw string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for id, d := range r.devs {
		if d.GatewayID == gw {
			out = append(out, id)
		}
	}
	return out
}

// recorder is a Notifier that keeps what it is given.
type recorder struct {
	mu sync.Mutex
	ns []Notification
}

func (r *recorder) Notify(n Notification) {
	r.mu.Lock()
	r.ns = append(r.ns, n)
	r.mu.Unlock()
}

func (r *recorder) all() []Notification {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Notification(nil), r.ns...)
}

func (r *recorder) transitions() []string {
	var out []string
	for _, n := range r.all() {
		out = append(out, n.Transition+":"+n.Alert.DeviceID)
	}
	return out
}

// clock is a settable Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

type fixture struct {
	e   *Engine
	reg *registry
	rec *recorder
	clk *clock
}

func dev(id, site string) *telemetry.Device {
	return &telemetry.Device{ID: id, Profile: &telemetry.Profile{Type: "traffic_counter", Domain: "roads", Site: site, Lifecycle: telemetry.LifecycleActive}}
}

func newFixture(t *testing.T, store Store, devs ...*telemetry.Device) *fixture {
	t.Helper()
	if len(devs) == 0 {
		devs = []*telemetry.Device{dev("d1", "north"), dev("d2", "north")}
	}
	f := &fixture{reg: newRegistry(devs...), rec: &recorder{}, clk: &clock{t: t0}}
	e, err := NewEngine(context.Background(), Options{
		Lookup: f.reg.lookup, DevicesByGateway: f.reg.byGateway, Store: store,
		Notifiers: []Notifier{f.rec}, Now: f.clk.now, Registerer: prometheus.NewRegistry(),
	})
	require.NoError(t, err)
	f.e = e
	return f
}

func (f *fixture) rule(t *testing.T, r Rule) Rule {
	t.Helper()
	r.Enabled = true
	if r.Name == "" {
		r.Name = "rule " + r.Kind
	}
	out, err := f.e.CreateRule(context.Background(), r)
	require.NoError(t, err)
	return out
}

func reading(device string, t time.Time, metric string, v float64) telemetry.Reading {
	return telemetry.Reading{DeviceID: device, Time: t, Values: []telemetry.Value{{Name: metric, Num: v}}}
}

func ptr(f float64) *float64 { return &f }

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func jsonMarshal(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}
