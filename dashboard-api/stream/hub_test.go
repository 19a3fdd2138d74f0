package stream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
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
	"tc-1": {ID: "tc-1", Slot: 0, Lat: 52.1, Lon: 5.2, Located: true, Profile: &telemetry.Profile{Domain: "roads", Site: "a12"}},
	"tc-2": {ID: "tc-2", Slot: 1, Lat: 48.8, Lon: 2.3, Located: true, Profile: &telemetry.Profile{Domain: "roads", Site: "a13"}},
	"rt-1": {ID: "rt-1", Slot: 2, Profile: &telemetry.Profile{Domain: "network", Site: "dc1"}},
	"fj-1": {ID: "fj-1", Slot: 3, Lat: -18.1, Lon: 178.4, Located: true, Profile: &telemetry.Profile{Domain: "network", Site: "suva"}},
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
	t.Cleanup(h.Close)
	return h
}

// newManualHub is a hub without its fan-out goroutine: the test calls
// flush, so queues can be inspected between steps.
func newManualHub(t testing.TB, mod func(*Options)) *Hub {
	t.Helper()
	return newTestHub(t, func(o *Options) {
		o.manual = true
		if mod != nil {
			mod(o)
		}
	})
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

// TestMaxSendRateGauge: the hub exports the send rate it was configured
// with, or its default, for operators to set the sent rate beside.
func TestMaxSendRateGauge(t *testing.T) {
	for _, tc := range []struct{ set, want int }{{0, DefaultMaxSendRate}, {2500, 2500}} {
		reg := prometheus.NewRegistry()
		newTestHub(t, func(o *Options) { o.Registerer, o.MaxSendRate = reg, tc.set })
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP infrawatch_stream_max_send_rate Events per second the stream hands to all its clients together at most (http.stream_max_send_rate); over it, clients take turns.
# TYPE infrawatch_stream_max_send_rate gauge
infrawatch_stream_max_send_rate %d
`, tc.want)), "infrawatch_stream_max_send_rate"), "MaxSendRate %d", tc.set)
	}
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
		d, _ := lookup(id)
		return &event{kind: k, deviceID: id, reg: d}
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

// numbered sets e's seq, as the intake does.
func numbered(seq uint64, e *event) *event {
	e.seq = seq
	return e
}

func TestEncode(t *testing.T) {
	e := &event{seq: 7}
	e.setReading("tc-\"1\"\n", time.UnixMilli(1764121200123),
		[]telemetry.Value{num("flow_vph", 1260), {Name: "ice", Bool: true, IsBool: true}, num("big", 1e21), num("bad", math.Inf(1))})
	var m map[string]any
	require.NoError(t, json.Unmarshal(e.encoded(), &m), "%s", e.encoded())
	require.Equal(t, map[string]any{"type": "reading", "seq": 7.0, "device_id": "tc-\"1\"\n", "ts": "2025-11-26T01:40:00.123Z",
		"values": map[string]any{"flow_vph": 1260.0, "ice": true, "big": 1e21, "bad": nil}}, m)

	s := numbered(8, statusEvent(telemetry.StatusEvent{DeviceID: "tc-1", Status: "offline", Previous: "stale", Time: time.Unix(0, 0)}))
	require.JSONEq(t, `{"type":"status","seq":8,"device_id":"tc-1","status":"offline","previous":"stale","ts":"1970-01-01T00:00:00Z"}`, string(s.encoded()))

	a := numbered(9, alertEvent(AlertEvent{Transition: "firing"}, []byte(`{"id":"a1"}`)))
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
	h.subscribe(c, compile(f), false)
	return c
}

// entry is a queued message, flattened: a control message or an event.
type entry struct {
	ctl *control
	ev  *event
}

func queued(c *client) []entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []entry
	for _, it := range c.q {
		if it.ctl != nil {
			out = append(out, entry{ctl: it.ctl})
			continue
		}
		for _, e := range it.ch.evs {
			out = append(out, entry{ev: e})
		}
	}
	return out
}

func TestCoalesceKeepsOrderAndNewestValues(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newManualHub(t, func(o *Options) { o.QueueSize = 8; o.CoalesceAbove = 4; o.Now = func() time.Time { return now } })
	c := attach(t, h, Filter{})
	// Each flush is one chunk: the writer never runs, so they pile up.
	// queue: snapshot(100), r tc-1 flow(101), status rt-1 (102), r tc-1 speed(103), r tc-2 (104)
	h.Consume([]telemetry.Reading{reading("tc-1", 1, num("flow", 1))})
	h.flush()
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "online"})
	h.flush()
	h.Consume([]telemetry.Reading{reading("tc-1", 2, num("speed", 2)), reading("tc-2", 3, num("flow", 3))})
	h.flush()
	require.Len(t, queued(c), 5)
	// Over CoalesceAbove: the next reading of tc-1 coalesces both queued tc-1 readings.
	h.Consume([]telemetry.Reading{reading("tc-1", 4, num("flow", 4))})
	h.flush()
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
	for i := range 5 {
		h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "stale"})
		h.flush()
		require.Equal(t, 1, h.Clients(), "status %d: 3+%d events queued", i, i+1)
	}
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "offline"})
	h.flush()
	require.Equal(t, 0, h.Clients())
	require.Equal(t, 1.0, testutil.ToFloat64(h.m.dropped.WithLabelValues(DropQueueFull)))
	_, _, cr := c.take()
	require.Equal(t, closeTooSlow, cr)
}

// TestCoalesceBySlot: readings are coalesced by registry slot; a slot that a
// deleted device left and a new one took, both within one run, does not mix
// the two devices' values, and an unregistered device's readings are kept.
func TestCoalesceBySlot(t *testing.T) {
	rd := func(seq uint64, id string, slot uint32, v telemetry.Value) *event {
		e := &event{seq: seq}
		if slot != noDev { // else not registered
			e.reg = &telemetry.Device{ID: id, Slot: slot, Profile: &telemetry.Profile{}}
		}
		e.setReading(id, time.UnixMilli(int64(seq)), []telemetry.Value{v})
		return e
	}
	evs := []*event{
		rd(1, "gone", 7, num("flow", 1)),
		rd(2, "gone", 7, num("speed", 2)),
		rd(3, "ghost", noDev, num("flow", 3)),
		rd(4, "new", 7, num("flow", 4)),
		rd(5, "ghost", noDev, num("flow", 5)),
		rd(6, "new", 7, num("temp", 6)),
	}
	var seen devScratch
	out, dropped := coalesce(evs, &seen)
	require.Equal(t, 2, dropped)
	var got []string
	for _, e := range out {
		got = append(got, string(e.encoded()))
	}
	require.Equal(t, []string{
		`{"type":"reading","seq":2,"device_id":"gone","ts":"1970-01-01T00:00:00.002Z","values":{"speed":2,"flow":1}}`,
		`{"type":"reading","seq":3,"device_id":"ghost","ts":"1970-01-01T00:00:00.003Z","values":{"flow":3}}`,
		`{"type":"reading","seq":5,"device_id":"ghost","ts":"1970-01-01T00:00:00.005Z","values":{"flow":5}}`,
		`{"type":"reading","seq":6,"device_id":"new","ts":"1970-01-01T00:00:00.006Z","values":{"temp":6,"flow":4}}`,
	}, got)
}

func TestFanOutSharesOneCoalescedChunkPerGroup(t *testing.T) {
	h := newManualHub(t, func(o *Options) { o.QueueSize = 8 })
	a := attach(t, h, Filter{Events: []string{"reading", "status"}})
	b := attach(t, h, Filter{Events: []string{"status", "reading", "status"}}) // the same subscription
	other := attach(t, h, Filter{Domains: []string{"network"}})
	require.Len(t, h.groups, 2)
	for _, c := range []*client{a, b, other} {
		c.take() // the snapshots
	}
	var rds []telemetry.Reading
	for i := range 10 {
		rds = append(rds, reading([]string{"tc-1", "tc-2"}[i%2], int64(i), num("flow", float64(i))))
	}
	h.Consume(rds)
	h.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "stale"})
	h.flush()
	// 11 events > CoalesceAbove (4): coalesced once, for the group.
	require.Len(t, a.q, 1)
	require.Same(t, a.q[0].ch, b.q[0].ch, "one chunk shared by the group")
	var got []string
	for _, e := range a.q[0].ch.evs {
		got = append(got, e.deviceID+"@"+jsonSeq(e.seq))
	}
	require.Equal(t, []string{"tc-1@109", "tc-2@110", "rt-1@111"}, got[len(got)-3:])
	require.Len(t, got, 3)
	require.Equal(t, 16.0, testutil.ToFloat64(h.m.coalesced), "8 readings not sent, to each of 2 clients")
	require.Len(t, other.q, 1)
	require.Len(t, other.q[0].ch.evs, 1, "network: the status only")
	// The group's frames are built once and shared.
	require.Equal(t, &a.q[0].ch.bytes(true)[0], &b.q[0].ch.bytes(true)[0])
}

func jsonSeq(s uint64) string { return strconv.FormatUint(s, 10) }

func TestLaggingClientDropped(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newManualHub(t, func(o *Options) {
		o.QueueSize = 4
		o.MaxLag = time.Second
		o.Now = func() time.Time { return now }
	})
	c := attach(t, h, Filter{})
	c.take() // the snapshot
	publish := func() {
		h.Consume([]telemetry.Reading{reading("tc-1", 1, num("flow", 1)), reading("tc-2", 1, num("flow", 1))})
		h.flush()
	}
	publish()
	now = now.Add(time.Hour)
	publish() // 4 events queued: not behind yet
	require.Equal(t, 1, h.Clients())
	publish() // 6 > CoalesceAbove (2): behind from now, coalesced to 2
	require.Len(t, queued(c), 2)
	// The writer takes the queue: caught up, the lag clock restarts.
	c.take()
	now = now.Add(2 * time.Second)
	publish()
	publish()
	require.Equal(t, 1, h.Clients())
	publish() // behind again
	now = now.Add(500 * time.Millisecond)
	publish()
	require.Equal(t, 1, h.Clients(), "coalescing keeps it in for MaxLag")
	now = now.Add(600 * time.Millisecond)
	publish()
	require.Equal(t, 0, h.Clients())
	require.Equal(t, 1.0, testutil.ToFloat64(h.m.dropped.WithLabelValues(DropLagging)))
	_, _, cr := c.take()
	require.Equal(t, closeTooSlow, cr)
}

func TestResumeFromRing(t *testing.T) {
	h := newManualHub(t, func(o *Options) { o.ReplaySize = 4 })
	c := attach(t, h, Filter{})
	for i := range 6 { // seqs 101..106; the ring holds 103..106
		h.Consume([]telemetry.Reading{reading("tc-1", int64(i), num("flow", 1))})
	}
	h.flush()
	require.True(t, h.resume(c, compile(Filter{}), false, 102))
	var seqs []uint64
	for _, e := range queued(c) {
		seqs = append(seqs, e.ev.seq)
	}
	require.Equal(t, []uint64{103, 104, 105, 106}, seqs)
	require.True(t, c.q[0].ch.replay)
	require.True(t, h.resume(c, compile(Filter{}), false, 106), "nothing missed")
	require.Empty(t, queued(c))
	require.False(t, h.resume(c, compile(Filter{}), false, 101), "103 is the oldest held: 102 is lost")
	require.False(t, h.resume(c, compile(Filter{}), false, 107), "from the future (another process)")
	require.Equal(t, msgSnapshot, queued(c)[0].ctl.typ)
}

func TestFrames(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 70000} {
		data := bytes.Repeat([]byte("x"), n)
		b := appendFrame([]byte("prev"), data)
		payload, rest, err := nextFrame(b[4:])
		require.NoError(t, err, "n=%d", n)
		require.Empty(t, rest)
		require.Equal(t, data, payload)
	}
	r := &event{seq: 7}
	r.setReading("tc-1", time.UnixMilli(0), []telemetry.Value{num("flow", 1)})
	evs := []*event{
		r,
		numbered(9, statusEvent(telemetry.StatusEvent{DeviceID: "tc-1", Status: "stale", Previous: "online", Time: time.UnixMilli(0)})),
	}
	payload, rest, err := nextFrame(appendBatchFrame(nil, evs))
	require.NoError(t, err)
	require.Empty(t, rest)
	require.JSONEq(t, `{"type":"batch","seq":9,"events":[`+string(evs[0].encoded())+`,`+string(evs[1].encoded())+`]}`, string(payload))
	require.Empty(t, appendBatchFrame(nil, nil))

	b := appendEventFrames(nil, evs)
	for _, e := range evs {
		payload, b, err = nextFrame(b)
		require.NoError(t, err)
		require.Equal(t, e.encoded(), payload)
	}
	require.Empty(t, b)
}

// TestConsumeCostIndependentOfClients: with 2,000 clients connected,
// Consume neither waits for the fan-out nor does more work than with none.
func TestConsumeCostIndependentOfClients(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 clients")
	}
	// Registered devices, as ingest's readings always are: the hub
	// coalesces a device's readings by its registry slot.
	ids, lk := fleet(benchDevices)
	registered := func(o *Options) { o.Lookup = lk }
	batch := make([]telemetry.Reading, 100)
	for i := range batch {
		batch[i] = reading(ids[i], int64(i), num("flow_vph", 1260), num("speed_kmh", 54.5))
	}
	// Allocations, on hubs without the fan-out goroutine (whose own
	// allocations would count): the same with 2,000 clients as with none.
	allocs := func(clients int) float64 {
		h := newManualHub(t, func(o *Options) { registered(o); o.IntakeSize = 1 << 30 })
		for range clients {
			attach(t, h, Filter{Events: []string{"reading"}})
		}
		require.Equal(t, clients, h.Clients())
		return testing.AllocsPerRun(200, func() { h.Consume(batch) })
	}
	allocs0, allocs2000 := allocs(0), allocs(2000)
	require.Equal(t, allocs0, allocs2000, "Consume does no per-client work")
	require.LessOrEqual(t, allocs2000, 4.0)

	// Time, on a live hub with 2,000 connected clients.
	perCall := func(h *Hub) time.Duration {
		const calls = 500
		start := time.Now()
		for range calls {
			h.Consume(batch)
		}
		return time.Since(start) / calls
	}
	per0 := perCall(newTestHub(t, registered))
	h := newTestHub(t, registered)
	conns := connectDiscard(t, h, 2000, `{"type":"subscribe","events":["reading"]}`)
	require.Equal(t, 2000, h.Clients())
	per := perCall(h)
	t.Logf("Consume of 100 readings: %v with no client, %v with 2,000 connected; %.0f allocs either way", per0, per, allocs0)

	// The fan-out holds h.mu while it works: Consume never takes it, so it
	// returns even when the fan-out is stuck, and drops once the intake is
	// full instead of waiting.
	h.mu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2 * DefaultIntakeSize / len(batch) {
			h.Consume(batch)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Consume waited for the fan-out")
	}
	h.mu.Unlock()
	require.Positive(t, testutil.ToFloat64(h.m.intakeDropped))

	// And every client still gets the newest readings.
	idleFanOut := func() bool {
		h.in.Lock()
		n := len(h.intake)
		h.in.Unlock()
		if n > 0 || !h.mu.TryLock() {
			return false
		}
		h.mu.Unlock()
		return true
	}
	require.Eventually(t, idleFanOut, 30*time.Second, time.Millisecond)
	h.Consume(batch)
	require.Eventually(t, func() bool { return idleFanOut() && h.Seq() > 0 }, 30*time.Second, time.Millisecond)
	require.Eventually(t, func() bool {
		for _, c := range conns {
			if c.lastSeq.Load() < h.Seq() {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, 2000, h.Clients(), "no client dropped")
}

// TestStaggeredTurns: over the send budget, clients take turns (the
// stride); a turn carries the newest reading of each device since the
// client's previous one, in seq order, and when publishing stops a tail of
// empty segments gives every client its last turn.
func TestStaggeredTurns(t *testing.T) {
	// A budget of 75 per segment: a turn of n events counts n+writeCost.
	require.Equal(t, 32, writeCost)
	h := newManualHub(t, func(o *Options) { o.MaxSendRate = 1500; o.FlushInterval = 50 * time.Millisecond })
	cs := make([]*client, 8)
	for i := range cs {
		cs[i] = attach(t, h, Filter{})
		cs[i].take() // the snapshot
	}
	withItems := func() []int {
		var got []int
		for i, c := range cs {
			if len(queued(c)) > 0 {
				got = append(got, i)
			}
		}
		return got
	}
	take := func() {
		for _, c := range cs {
			c.take()
		}
	}

	// Segment 1: 8 clients × (2 events + a write) would be 272. The first
	// clients (the fan-out goes backwards) take it up to twice the budget;
	// the others wait for their turn under the stride the would-be total
	// sets.
	h.Consume([]telemetry.Reading{reading("tc-1", 1, num("flow", 1)), reading("tc-2", 2, num("flow", 2))})
	h.flush()
	require.Equal(t, []int{3, 4, 5, 6, 7}, withItems())
	require.Equal(t, uint64(4), h.stride, "272 would-be / budget 75")
	take()

	// Segment 2: the clients whose phase is due, 2 and 6. Client 2 missed
	// segment 1: its window coalesces both, merging tc-1's metrics.
	h.Consume([]telemetry.Reading{reading("tc-1", 3, num("speed", 3))})
	h.flush()
	require.Equal(t, []int{2, 6}, withItems())
	var got []string
	for _, e := range queued(cs[2]) {
		got = append(got, string(e.ev.encoded()))
	}
	require.Equal(t, []string{
		`{"type":"reading","seq":102,"device_id":"tc-2","ts":"1970-01-01T00:00:00.002Z","values":{"flow":2}}`,
		`{"type":"reading","seq":103,"device_id":"tc-1","ts":"1970-01-01T00:00:00.003Z","values":{"speed":3,"flow":1}}`,
	}, got)
	require.Len(t, queued(cs[6]), 1, "client 6 had segment 1: only tc-1's new reading")
	take()

	// Every later segment serves 1/stride of the clients, and each gets
	// its events in seq order, one reading per device per turn.
	last := make([]uint64, len(cs))
	for i := range 10 {
		h.Consume([]telemetry.Reading{reading("tc-1", int64(10+i), num("flow", float64(i)))})
		stride := h.stride
		h.flush()
		require.Len(t, withItems(), len(cs)/int(stride), "segment %d, stride %d", 3+i, stride)
		for ci, c := range cs {
			devs := map[string]bool{}
			for _, e := range queued(c) {
				require.Greater(t, e.ev.seq, last[ci], "client %d: seq order", ci)
				last[ci] = e.ev.seq
				require.False(t, devs[e.ev.deviceID], "client %d: one reading of %s per turn", ci, e.ev.deviceID)
				devs[e.ev.deviceID] = true
			}
		}
		take()
	}
	require.Equal(t, uint64(4), h.stride, "2 turns of 1 event (66) per segment: within the budget")

	// Publishing stops: empty segments follow until every phase had its
	// turn, so every client ends with the newest reading.
	newest := h.Seq()
	tails := 0
	for {
		_, _, tail := h.flush()
		for ci, c := range cs {
			for _, e := range queued(c) {
				last[ci] = e.ev.seq
			}
		}
		take()
		if !tail {
			break
		}
		tails++
		require.Less(t, tails, 2*windowSegs, "the tail ends")
	}
	for ci := range cs {
		require.Equal(t, newest, last[ci], "client %d got the newest reading", ci)
	}
	_, _, tail := h.flush()
	require.False(t, tail, "nothing left: the fan-out sleeps until the next event")

	// A message for one client (an error answer) comes behind the events
	// published before it, even when it is not the client's turn.
	h.Consume([]telemetry.Reading{reading("tc-2", 50, num("flow", 50))})
	cs[0].sendError("bad")
	h.flush()
	q := queued(cs[0])
	require.Len(t, q, 2)
	require.Equal(t, h.Seq(), q[0].ev.seq)
	require.Equal(t, msgError, q[1].ctl.typ)
}

func TestStrideFollowsBudget(t *testing.T) {
	h := newManualHub(t, func(o *Options) { o.MaxSendRate = 1500; o.FlushInterval = 50 * time.Millisecond }) // 75 per segment
	step := func(handed, segs int) uint64 {
		for range segs {
			h.adjustStrideLocked(handed)
		}
		return h.stride
	}
	require.Equal(t, uint64(3), step(200, 1), "over twice the budget: at once, in proportion")
	require.Equal(t, uint64(3), step(100, strideCheck-1), "over by a third: not before the check period ends")
	require.Equal(t, uint64(4), step(100, 1), "then in proportion")
	require.Equal(t, uint64(4), step(60, strideCheck), "within the budget: kept")
	require.Equal(t, uint64(2), step(30, strideCheck), "under half: halved")
	require.Equal(t, uint64(windowSegs), step(1e6, 1), "no wider than the window")
}

// TestTailAfterStrideChange: when the stride changes in the last segment
// that has events (the load fell at the end of a burst), the tail of empty
// segments still gives every client its turn, so each ends with the newest
// event instead of waiting for the next one, however long that takes.
func TestTailAfterStrideChange(t *testing.T) {
	// A budget of 75 per segment; a turn of n events counts n+writeCost.
	h := newManualHub(t, func(o *Options) { o.MaxSendRate = 1500; o.FlushInterval = 50 * time.Millisecond })
	cs := make([]*client, 8)
	for i := range cs {
		cs[i] = attach(t, h, Filter{Devices: []string{"tc-1"}})
		cs[i].take() // the snapshot
	}
	last := make([]uint64, len(cs))
	take := func() {
		for ci, c := range cs {
			for _, e := range queued(c) {
				last[ci] = e.ev.seq
			}
			c.take()
		}
	}
	step := func(id string) {
		h.Consume([]telemetry.Reading{reading(id, 1, num("flow", 1))})
		h.flush()
		take()
	}
	// Every client watching: over the budget, the stride grows.
	step("tc-1")
	require.Greater(t, h.stride, uint64(1))
	// Then readings nobody watches: far under the budget, the stride
	// halves at the end of each check period. The segment that ends a
	// period carries the burst's last reading of tc-1.
	for h.stride > 1 {
		stride := h.stride
		for h.stride == stride && h.ctlSegs < max(strideCheck, int(h.stride))-1 {
			step("rt-1")
		}
		if h.stride != stride {
			continue
		}
		step("tc-1") // ends the check period: the stride halves here
		require.Less(t, h.stride, stride)
		newest := h.Seq()
		for tails := 0; ; tails++ {
			require.Less(t, tails, 2*windowSegs, "the tail ends")
			_, _, tail := h.flush()
			take()
			if !tail {
				break
			}
		}
		for ci := range cs {
			require.Equal(t, newest, last[ci], "client %d got the newest reading (stride %d → %d)", ci, stride, h.stride)
		}
	}
}

// TestCoalesceKeepsNewestByTime: a late reading (an older ts, from a
// device's buffer) that arrives after a newer one must not hide it when the
// two are coalesced. Sent one by one, a client keeps each metric's value
// with the later ts, as live state and /api/v1/state do; coalesced, it must
// end with the same values, or its dashboard shows an older value than the
// server holds until the device's next reading.
func TestCoalesceKeepsNewestByTime(t *testing.T) {
	reg := testDevices["tc-1"]
	rd := func(seq uint64, ms int64, vals ...telemetry.Value) *event {
		e := &event{seq: seq, reg: reg}
		e.setReading("tc-1", time.UnixMilli(ms), vals)
		return e
	}
	var seen devScratch
	out, dropped := coalesce([]*event{
		rd(1, 5000, num("flow", 100), num("speed", 50)),   // live
		rd(2, 1000, num("flow", 90), num("occupancy", 7)), // late, from the buffer
	}, &seen)
	require.Equal(t, 1, dropped)
	require.Len(t, out, 1)
	require.JSONEq(t, `{"type":"reading","seq":2,"device_id":"tc-1","ts":"1970-01-01T00:00:05Z",`+
		`"values":{"flow":100,"speed":50,"occupancy":7}}`, string(out[0].encoded()))

	// In seq order the later reading still wins a tie and an older one.
	out, _ = coalesce([]*event{rd(1, 1000, num("flow", 1)), rd(2, 1000, num("flow", 2))}, &seen)
	require.JSONEq(t, `{"type":"reading","seq":2,"device_id":"tc-1","ts":"1970-01-01T00:00:01Z","values":{"flow":2}}`,
		string(out[0].encoded()))
}
