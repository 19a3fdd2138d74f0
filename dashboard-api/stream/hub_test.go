package stream

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/infrawatch/infrawatch/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testDevices = map[string]*telemetry.Device{
	"tc-1": {ID: "tc-1", Domain: "roads", Site: "a12", Lat: 52.1, Lon: 5.2},
	"tc-2": {ID: "tc-2", Domain: "roads", Site: "a13", Lat: 48.8, Lon: 2.3},
	"rt-1": {ID: "rt-1", Domain: "network", Site: "dc1"},
	"fj-1": {ID: "fj-1", Domain: "network", Site: "suva", Lat: -18.1, Lon: 178.4},
}

func lookup(id string) (*telemetry.Device, bool) {
	d, ok := testDevices[id]
	return d, ok
}

func newTestHub(t testing.TB, mod func(*Options)) *Hub {
	t.Helper()
	o := Options{Lookup: lookup, Registerer: prometheus.NewRegistry(), FirstSeq: 100}
	if mod != nil {
		mod(&o)
	}
	h, err := NewHub(o)
	require.NoError(t, err)
	return h
}

func reading(id string, ts int64, vals ...telemetry.Value) telemetry.Reading {
	return telemetry.Reading{DeviceID: id, Time: time.UnixMilli(ts), Values: vals}
}

func num(name string, v float64) telemetry.Value { return telemetry.Value{Name: name, Num: v} }

func TestOptionsValidate(t *testing.T) {
	_, err := NewHub(Options{QueueSize: -1, MaxLag: -time.Second})
	require.ErrorContains(t, err, "Lookup: required")
	require.ErrorContains(t, err, "QueueSize: must not be negative")
	require.ErrorContains(t, err, "MaxLag: must not be negative")
}

func TestFilterValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Filter
		err  string
	}{
		{"empty", Filter{}, ""},
		{"all", Filter{Domains: []string{"roads"}, Events: []string{"reading", "status", "alert"}, BBox: []float64{-10, 40, 10, 60}}, ""},
		{"antimeridian", Filter{BBox: []float64{170, -30, -170, 0}}, ""},
		{"bad event", Filter{Events: []string{"readings"}}, `events: "readings"`},
		{"short bbox", Filter{BBox: []float64{1, 2, 3}}, "bbox: want"},
		{"lon range", Filter{BBox: []float64{-181, 0, 10, 10}}, "longitudes"},
		{"lat range", Filter{BBox: []float64{0, 0, 10, 91}}, "latitudes"},
		{"lat order", Filter{BBox: []float64{0, 10, 10, 0}}, "minLat"},
		{"nan", Filter{BBox: []float64{math.NaN(), 0, 10, 10}}, "longitudes"},
		{"too many", Filter{Devices: make([]string, MaxFilterValues+1)}, "devices: at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.Validate()
			if tc.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.err)
			}
		})
	}
}

func TestFilterMatch(t *testing.T) {
	ev := func(k kind, id string) *event {
		e := &event{kind: k, deviceID: id}
		d, _ := lookup(id)
		e.place(d)
		return e
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want []string // of tc-1 reading, rt-1 status, fj-1 alert, tc-2 reading
	}{
		{"all", Filter{}, []string{"tc-1", "rt-1", "fj-1", "tc-2"}},
		{"domain", Filter{Domains: []string{"network"}}, []string{"rt-1", "fj-1"}},
		{"sites", Filter{Sites: []string{"a12", "suva"}}, []string{"tc-1", "fj-1"}},
		{"devices", Filter{Devices: []string{"tc-2"}}, []string{"tc-2"}},
		{"events", Filter{Events: []string{"status", "alert"}}, []string{"rt-1", "fj-1"}},
		{"bbox, unlocated excluded", Filter{BBox: []float64{0, 45, 10, 55}}, []string{"tc-1", "tc-2"}},
		{"bbox across antimeridian", Filter{BBox: []float64{170, -30, -170, 0}}, []string{"fj-1"}},
		{"and", Filter{Domains: []string{"roads"}, BBox: []float64{4, 50, 6, 53}}, []string{"tc-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := compile(tc.f)
			var got []string
			for _, e := range []*event{ev(kindReading, "tc-1"), ev(kindStatus, "rt-1"), ev(kindAlert, "fj-1"), ev(kindReading, "tc-2")} {
				if m.match(e) {
					got = append(got, e.deviceID)
				}
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestEncode(t *testing.T) {
	e := &event{seq: 7, kind: kindReading, deviceID: "tc-\"1\"\n", time: time.UnixMilli(1764121200123),
		values: []telemetry.Value{num("flow_vph", 1260), {Name: "ice", Bool: true, IsBool: true}, num("big", 1e21), num("bad", math.Inf(1))}}
	var m map[string]any
	require.NoError(t, json.Unmarshal(e.encoded(), &m), "%s", e.encoded())
	require.Equal(t, map[string]any{"type": "reading", "seq": 7.0, "device_id": "tc-\"1\"\n", "ts": "2025-11-26T01:40:00.123Z",
		"values": map[string]any{"flow_vph": 1260.0, "ice": true, "big": 1e21, "bad": nil}}, m)

	s := &event{seq: 8, kind: kindStatus, deviceID: "tc-1", status: "offline", previous: "stale", time: time.Unix(0, 0)}
	require.JSONEq(t, `{"type":"status","seq":8,"device_id":"tc-1","status":"offline","previous":"stale","ts":"1970-01-01T00:00:00Z"}`, string(s.encoded()))

	a := &event{seq: 9, kind: kindAlert, transition: "firing", alertJSON: []byte(`{"id":"a1"}`)}
	require.JSONEq(t, `{"type":"alert","seq":9,"transition":"firing","alert":{"id":"a1"}}`, string(a.encoded()))

	bad := &event{seq: 1, kind: kindStatus, deviceID: "x\xffy"}
	require.True(t, json.Valid(bad.encoded()))
	require.Contains(t, string(bad.encoded()), "x\uFFFDy")
}

// attach registers a connectionless client, for tests of the queue logic.
func attach(t *testing.T, h *Hub, f Filter) *client {
	t.Helper()
	c := newClient(h, nil, ServeOptions{})
	require.True(t, h.add(c))
	t.Cleanup(h.serving.Done)
	h.subscribe(c, compile(f))
	return c
}

func queued(c *client) []item {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]item(nil), c.q[c.head:]...)
}

func TestCoalesceKeepsOrderAndNewestValues(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newTestHub(t, func(o *Options) { o.QueueSize = 5; o.Now = func() time.Time { return now } })
	c := attach(t, h, Filter{})
	// queue: snapshot(100), r tc-1 flow(101), status rt-1 (102), r tc-1 speed(103), r tc-2 (104)
	h.Consume([]telemetry.Reading{reading("tc-1", 1, num("flow", 1))})
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "online"})
	h.Consume([]telemetry.Reading{reading("tc-1", 2, num("speed", 2)), reading("tc-2", 3, num("flow", 3))})
	require.Len(t, queued(c), 5)
	// full: the next reading of tc-1 coalesces both queued tc-1 readings.
	h.Consume([]telemetry.Reading{reading("tc-1", 4, num("flow", 4))})
	q := queued(c)
	var seqs []uint64
	for _, it := range q[1:] {
		seqs = append(seqs, it.ev.seq)
	}
	require.Equal(t, msgSnapshot, q[0].ctl.typ)
	require.Equal(t, uint64(100), q[0].ctl.seq)
	require.Equal(t, []uint64{102, 104, 105}, seqs, "status kept, order kept, newest tc-1 last")
	last := q[len(q)-1].ev
	require.JSONEq(t, `{"type":"reading","seq":105,"device_id":"tc-1","ts":"1970-01-01T00:00:00.004Z","values":{"flow":4,"speed":2}}`,
		string(last.encoded()), "the speed of the dropped reading survives")
	require.Equal(t, 2.0, testutil.ToFloat64(h.m.coalesced))
	require.Equal(t, 1, h.Clients())

	// Status events are never coalesced: the queue fills and the client goes.
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "stale"})
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "offline"})
	require.Equal(t, 0, h.Clients())
	require.Equal(t, 1.0, testutil.ToFloat64(h.m.dropped.WithLabelValues(DropQueueFull)))
	_, cr, _ := c.next()
	require.Equal(t, closeTooSlow, cr)
}

func TestLaggingClientDropped(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newTestHub(t, func(o *Options) {
		o.QueueSize = 2
		o.MaxLag = time.Second
		o.Now = func() time.Time { return now }
	})
	c := attach(t, h, Filter{})
	for i := range 10 {
		h.Consume([]telemetry.Reading{reading("tc-1", int64(i), num("flow", float64(i)))})
	}
	require.Equal(t, 1, h.Clients(), "coalescing keeps it in")
	// Catching up (the queue drains) resets the lag clock.
	for {
		if _, _, ok := c.next(); !ok {
			break
		}
	}
	now = now.Add(2 * time.Second)
	h.Consume([]telemetry.Reading{reading("tc-1", 11, num("flow", 1))})
	require.Equal(t, 1, h.Clients())
	h.Consume([]telemetry.Reading{reading("tc-1", 12, num("flow", 1)), reading("tc-1", 13, num("flow", 1))})
	now = now.Add(1500 * time.Millisecond)
	h.Consume([]telemetry.Reading{reading("tc-1", 14, num("flow", 1))})
	require.Equal(t, 0, h.Clients())
	require.Equal(t, 1.0, testutil.ToFloat64(h.m.dropped.WithLabelValues(DropLagging)))
}

func TestResumeFromRing(t *testing.T) {
	h := newTestHub(t, func(o *Options) { o.ReplaySize = 4 })
	c := attach(t, h, Filter{})
	for i := range 6 { // seqs 101..106; the ring holds 103..106
		h.Consume([]telemetry.Reading{reading("tc-1", int64(i), num("flow", 1))})
	}
	require.True(t, h.resume(c, compile(Filter{}), 102))
	c.mu.Lock()
	var seqs []uint64
	for _, e := range c.replay {
		seqs = append(seqs, e.seq)
	}
	c.mu.Unlock()
	require.Equal(t, []uint64{103, 104, 105, 106}, seqs)
	require.True(t, h.resume(c, compile(Filter{}), 106), "nothing missed")
	require.False(t, h.resume(c, compile(Filter{}), 101), "103 is the oldest held: 102 is lost")
	require.False(t, h.resume(c, compile(Filter{}), 107), "from the future (another process)")
	require.Equal(t, msgSnapshot, queued(c)[0].ctl.typ)
}
