package dashboardapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/dashboard-api/stream"
	"github.com/infrawatch/infrawatch/telemetry"
)

func init() {
	// Every test router has the stream route, on a hub of its own.
	envHooks = append(envHooks, func(t *testing.T, o *Options) {
		hub, err := stream.NewHub(stream.Options{Lookup: lookupFrom(o.Devices), Logger: o.Logger})
		require.NoError(t, err)
		t.Cleanup(hub.Close)
		o.Stream = hub
	})
	// A plain GET is not a websocket handshake: 400 once authorised.
	extraAuthCases = append(extraAuthCases, func() []authCase {
		return []authCase{{"GET", "/api/v1/stream", nil, RoleViewer, http.StatusBadRequest}}
	})
}

// lookupFrom is what cmd gets from devices.Registry.Lookup, over the fake.
func lookupFrom(ds DeviceService) func(string) (*telemetry.Device, bool) {
	// Slots as the registry gives them: one per device id.
	var mu sync.Mutex
	slots := map[string]uint32{}
	return func(id string) (*telemetry.Device, bool) {
		d, err := ds.Get(id)
		if err != nil {
			return nil, false
		}
		mu.Lock()
		slot, ok := slots[id]
		if !ok {
			slot = uint32(len(slots))
			slots[id] = slot
		}
		mu.Unlock()
		td := &telemetry.Device{ID: d.ID, Name: d.Name, Slot: slot, Profile: &telemetry.Profile{Type: d.Type, Domain: d.Domain, Site: d.Site}}
		if d.Location != nil {
			td.Lat, td.Lon, td.Located = d.Location.Lat, d.Location.Lon, true
		}
		return td, true
	}
}

type streamEnv struct {
	*env
	hub *stream.Hub
	reg *prometheus.Registry
}

// newStreamEnv is an API server whose hub the test holds, with fleet seeded:
// two road devices, one network device without location.
func newStreamEnv(t *testing.T, so func(*stream.Options), mod ...func(*Options)) *streamEnv {
	t.Helper()
	se := &streamEnv{reg: prometheus.NewRegistry()}
	withHub := func(o *Options) {
		opts := stream.Options{Lookup: lookupFrom(o.Devices), Registerer: se.reg, FirstSeq: 1000, Logger: o.Logger}
		if so != nil {
			so(&opts)
		}
		hub, err := stream.NewHub(opts)
		require.NoError(t, err)
		t.Cleanup(hub.Close)
		o.Stream = hub
		se.hub = hub
	}
	se.env = newEnv(t, append([]func(*Options){withHub}, mod...)...)
	se.seed(Device{ID: "tc-1", Domain: "roads", Site: "a12", Type: "traffic_counter", Location: &Location{Lat: 52.1, Lon: 5.2}})
	se.seed(Device{ID: "tc-2", Domain: "roads", Site: "a13", Type: "traffic_counter", Location: &Location{Lat: 48.8, Lon: 2.3}})
	se.seed(Device{ID: "rt-1", Domain: "network", Site: "dc1", Type: "router"})
	return se
}

func (se *streamEnv) wsURL(query string) string {
	return "ws" + strings.TrimPrefix(se.srv.URL, "http") + "/api/v1/stream" + query
}

// counter reads a counter or gauge of the hub's registry.
func (se *streamEnv) counter(t *testing.T, name, label string) float64 {
	t.Helper()
	mfs, err := se.reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					match = true
				}
			}
			if match {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func (se *streamEnv) reading(id string, vals ...telemetry.Value) {
	se.hub.Consume([]telemetry.Reading{{DeviceID: id, Time: time.UnixMilli(1764121200123), Values: vals}})
}

type wsMsg struct {
	Type       string           `json:"type"`
	Seq        uint64           `json:"seq"`
	DeviceID   string           `json:"device_id"`
	Status     string           `json:"status"`
	Transition string           `json:"transition"`
	Values     map[string]any   `json:"values"`
	Devices    []map[string]any `json:"devices"`
	Alert      map[string]any   `json:"alert"`
	Code       string           `json:"code"`
	Message    string           `json:"message"`
	Events     []wsMsg          `json:"events"`
}

type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func dialWith(t *testing.T, d *websocket.Dialer, url string, hdr http.Header) (*wsClient, *http.Response, error) {
	t.Helper()
	conn, resp, err := d.Dial(url, hdr)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { conn.Close() })
	return &wsClient{t: t, conn: conn}, resp, nil
}

func (se *streamEnv) dial(t *testing.T) *wsClient {
	t.Helper()
	c, _, err := dialWith(t, websocket.DefaultDialer, se.wsURL("?token="+viewerTok), nil)
	require.NoError(t, err)
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	require.NoError(c.t, c.conn.WriteJSON(v))
}

func (c *wsClient) next() wsMsg {
	c.t.Helper()
	require.NoError(c.t, c.conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	var m wsMsg
	_, raw, err := c.conn.ReadMessage()
	require.NoError(c.t, err)
	require.NoError(c.t, json.Unmarshal(raw, &m), "%s", raw)
	return m
}

// until reads messages up to the first error message (the sentinel) and
// returns those before it. The sentinel is an invalid client message sent
// after the events were published: its answer is queued behind them.
func (c *wsClient) untilSentinel() []wsMsg {
	c.t.Helper()
	c.send(map[string]any{"type": "sentinel"})
	var out []wsMsg
	for {
		m := c.next()
		if m.Type == "error" {
			require.Equal(c.t, "bad_request", m.Code)
			return out
		}
		out = append(out, m)
	}
}

// closeCode reads until the connection ends and returns its close code.
func (c *wsClient) closeCode() (int, []wsMsg) {
	c.t.Helper()
	var msgs []wsMsg
	for {
		require.NoError(c.t, c.conn.SetReadDeadline(time.Now().Add(15*time.Second)))
		_, raw, err := c.conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, msgs
			}
			c.t.Fatalf("connection ended without a close frame: %v", err)
		}
		var m wsMsg
		require.NoError(c.t, json.Unmarshal(raw, &m))
		msgs = append(msgs, m)
	}
}

func ids(devs []map[string]any) []string {
	out := []string{}
	for _, d := range devs {
		out = append(out, d["id"].(string))
	}
	return out
}

func TestStreamAuthAndOrigin(t *testing.T) {
	se := newStreamEnv(t, nil, func(o *Options) { o.AllowedOrigins = []string{"https://ops.example.org"} })
	d := websocket.DefaultDialer
	for _, tc := range []struct {
		name   string
		query  string
		header http.Header
		status int // 0: upgraded
	}{
		{"no token", "", nil, 401},
		{"bad token", "?token=nope", nil, 401},
		{"bad header token", "", http.Header{"Authorization": {"Bearer nope"}}, 401},
		{"header token", "", http.Header{"Authorization": {"Bearer " + viewerTok}}, 0},
		{"query token", "?token=" + operatorTok, nil, 0},
		{"foreign origin", "?token=" + viewerTok, http.Header{"Origin": {"https://evil.example"}}, 403},
		{"allowed origin", "?token=" + viewerTok, http.Header{"Origin": {"https://ops.example.org"}}, 0},
		{"same origin", "?token=" + viewerTok, http.Header{"Origin": {se.srv.URL}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, err := dialWith(t, d, se.wsURL(tc.query), tc.header)
			if tc.status == 0 {
				require.NoError(t, err)
				c.send(map[string]any{"type": "subscribe"})
				require.Equal(t, "snapshot", c.next().Type)
				return
			}
			require.ErrorIs(t, err, websocket.ErrBadHandshake)
			require.Equal(t, tc.status, resp.StatusCode)
			var body errorBody
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			resp.Body.Close()
			require.NotEmpty(t, body.Error.Code)
			require.NotContains(t, se.logs.String(), viewerTok, "the token never reaches the log")
		})
	}
}

func TestStreamSnapshotThenFilteredEvents(t *testing.T) {
	se := newStreamEnv(t, nil)
	se.live.set(DeviceState{DeviceID: "tc-1", Status: "online"})
	flow := func(v float64) telemetry.Value { return telemetry.Value{Name: "flow_vph", Num: v} }
	publish := func() {
		se.reading("tc-1", flow(1), telemetry.Value{Name: "ice", Bool: true, IsBool: true})
		se.reading("tc-2", flow(2))
		se.reading("rt-1", telemetry.Value{Name: "util", Num: 0.5})
		se.hub.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "offline", Previous: "online", Time: time.Unix(0, 0)})
		se.hub.Alert(stream.AlertEvent{Transition: "firing", DeviceID: "tc-2", Alert: map[string]any{"id": "a1", "rule_id": "r1"}})
	}
	type got struct{ typ, dev string }
	for _, tc := range []struct {
		name     string
		filter   map[string]any
		snapshot []string
		events   []got
	}{
		{"all", map[string]any{}, []string{"rt-1", "tc-1", "tc-2"},
			[]got{{"reading", "tc-1"}, {"reading", "tc-2"}, {"reading", "rt-1"}, {"status", "rt-1"}, {"alert", ""}}},
		{"domains", map[string]any{"domains": []string{"network"}}, []string{"rt-1"},
			[]got{{"reading", "rt-1"}, {"status", "rt-1"}}},
		{"sites", map[string]any{"sites": []string{"a12", "dc1"}}, []string{"rt-1", "tc-1"},
			[]got{{"reading", "tc-1"}, {"reading", "rt-1"}, {"status", "rt-1"}}},
		{"devices", map[string]any{"devices": []string{"tc-2"}}, []string{"tc-2"},
			[]got{{"reading", "tc-2"}, {"alert", ""}}},
		{"events", map[string]any{"events": []string{"status", "alert"}}, []string{"rt-1", "tc-1", "tc-2"},
			[]got{{"status", "rt-1"}, {"alert", ""}}},
		{"bbox", map[string]any{"bbox": []float64{0, 45, 4, 50}}, []string{"tc-2"},
			[]got{{"reading", "tc-2"}, {"alert", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := se.dial(t)
			sub := map[string]any{"type": "subscribe"}
			for k, v := range tc.filter {
				sub[k] = v
			}
			c.send(sub)
			snap := c.next()
			require.Equal(t, "snapshot", snap.Type, "the snapshot comes first")
			require.Equal(t, se.hub.Seq(), snap.Seq)
			require.Equal(t, tc.snapshot, ids(snap.Devices))
			publish()
			msgs := c.untilSentinel()
			var evs []got
			last := snap.Seq
			for _, m := range msgs {
				require.Greater(t, m.Seq, last, "seq strictly increasing")
				last = m.Seq
				evs = append(evs, got{m.Type, m.DeviceID})
			}
			require.Equal(t, tc.events, evs)
		})
	}

	// The snapshot is /state's data; a reading is as the protocol shows it.
	c := se.dial(t)
	c.send(map[string]any{"type": "subscribe", "devices": []string{"tc-1"}})
	snap := c.next()
	require.Equal(t, "online", snap.Devices[0]["status"])
	require.Equal(t, "roads", snap.Devices[0]["domain"])
	se.reading("tc-1", flow(1260), telemetry.Value{Name: "ice", Bool: true, IsBool: true})
	_, raw, err := c.conn.ReadMessage()
	require.NoError(t, err)
	require.JSONEq(t, `{"type":"reading","seq":`+jsonNum(snap.Seq+1)+`,"device_id":"tc-1","ts":"2025-11-26T01:40:00.123Z","values":{"flow_vph":1260,"ice":true}}`, string(raw))

	// Bad messages are answered, and the connection stays open.
	for _, bad := range []string{`{"type":"subscribe","domain":["roads"]}`, `{"type":"subscribe","events":["x"]}`, `{"type":"resume"}`, `nope`} {
		require.NoError(t, c.conn.WriteMessage(websocket.TextMessage, []byte(bad)))
		m := c.next()
		require.Equal(t, "error", m.Type, bad)
		require.NotEmpty(t, m.Message)
	}
	c.send(map[string]any{"type": "subscribe"})
	require.Equal(t, "snapshot", c.next().Type)
}

func jsonNum(n uint64) string { b, _ := json.Marshal(n); return string(b) }

func TestStreamSeqWithoutGaps(t *testing.T) {
	se := newStreamEnv(t, func(o *stream.Options) { o.QueueSize = 8192 })
	c := se.dial(t)
	c.send(map[string]any{"type": "subscribe"})
	snap := c.next()
	const n = 3000
	for i := range n {
		switch i % 10 {
		case 3:
			se.hub.Status(telemetry.StatusEvent{DeviceID: "tc-1", Status: "online"})
		case 7:
			se.hub.Alert(stream.AlertEvent{Transition: "firing", DeviceID: "tc-2", Alert: map[string]any{"n": i}})
		default:
			se.reading([]string{"tc-1", "tc-2", "rt-1"}[i%3], telemetry.Value{Name: "v", Num: float64(i)})
		}
	}
	for i := range n {
		m := c.next()
		require.Equal(t, snap.Seq+uint64(i)+1, m.Seq, "message %d", i)
	}
	require.Equal(t, 0.0, se.counter(t, "infrawatch_stream_readings_coalesced_total", ""))
	require.Equal(t, 1.0, se.counter(t, "infrawatch_stream_clients", ""))
	require.Equal(t, float64(n)*0.8, se.counter(t, "infrawatch_stream_messages_sent_total", "reading"))
}

func TestStreamResume(t *testing.T) {
	se := newStreamEnv(t, func(o *stream.Options) { o.ReplaySize = 16 })
	c := se.dial(t)
	c.send(map[string]any{"type": "subscribe", "domains": []string{"roads"}})
	snap := c.next()
	se.reading("tc-1", telemetry.Value{Name: "v", Num: 1})
	last := c.next().Seq
	require.NoError(t, c.conn.Close())

	// Missed while away: two road events, one network event.
	se.reading("tc-2", telemetry.Value{Name: "v", Num: 2})
	se.reading("rt-1", telemetry.Value{Name: "v", Num: 3})
	se.hub.Status(telemetry.StatusEvent{DeviceID: "tc-1", Status: "stale", Previous: "online"})

	c = se.dial(t)
	c.send(map[string]any{"type": "resume", "after": last, "domains": []string{"roads"}})
	msgs := c.untilSentinel()
	require.Len(t, msgs, 2, "exactly the missed events of the filter, no snapshot")
	require.Equal(t, []uint64{last + 1, last + 3}, []uint64{msgs[0].Seq, msgs[1].Seq})
	require.Equal(t, "tc-2", msgs[0].DeviceID)
	require.Equal(t, "stale", msgs[1].Status)
	// Live events follow the replay.
	se.reading("tc-1", telemetry.Value{Name: "v", Num: 4})
	require.Equal(t, last+4, c.next().Seq)

	// Nothing missed: nothing sent.
	c2 := se.dial(t)
	c2.send(map[string]any{"type": "resume", "after": se.hub.Seq()})
	require.Empty(t, c2.untilSentinel())

	// Too old (the ring holds 16 events): a snapshot instead.
	for i := range 20 {
		se.reading("tc-1", telemetry.Value{Name: "v", Num: float64(i)})
	}
	c3 := se.dial(t)
	c3.send(map[string]any{"type": "resume", "after": snap.Seq})
	m := c3.next()
	require.Equal(t, "snapshot", m.Type)
	require.Equal(t, se.hub.Seq(), m.Seq)
	require.Equal(t, []string{"rt-1", "tc-1", "tc-2"}, ids(m.Devices))
}

func TestStreamSubscriptionChange(t *testing.T) {
	se := newStreamEnv(t, nil)
	c := se.dial(t)
	c.send(map[string]any{"type": "subscribe", "domains": []string{"roads"}})
	require.Equal(t, []string{"tc-1", "tc-2"}, ids(c.next().Devices))
	se.reading("tc-1", telemetry.Value{Name: "v", Num: 1})
	require.Equal(t, "tc-1", c.next().DeviceID)

	c.send(map[string]any{"type": "subscribe", "domains": []string{"network"}})
	snap := c.next()
	require.Equal(t, "snapshot", snap.Type)
	require.Equal(t, []string{"rt-1"}, ids(snap.Devices))
	se.reading("tc-1", telemetry.Value{Name: "v", Num: 2})
	se.reading("rt-1", telemetry.Value{Name: "v", Num: 3})
	msgs := c.untilSentinel()
	require.Len(t, msgs, 1)
	require.Equal(t, "rt-1", msgs[0].DeviceID)
	require.Equal(t, snap.Seq+2, msgs[0].Seq)
}

// smallBufferDialer makes a client whose kernel receive buffer is tiny, so
// that a client that does not read backs the server up quickly.
func smallBufferDialer() *websocket.Dialer {
	nd := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	return &websocket.Dialer{NetDialContext: nd.DialContext, ReadBufferSize: 1024, HandshakeTimeout: 5 * time.Second}
}

func TestStreamSlowClientDroppedFastClientWhole(t *testing.T) {
	se := newStreamEnv(t, func(o *stream.Options) {
		o.QueueSize = 64
		o.MaxLag = 300 * time.Millisecond
		// Each burst below waits for the fast client, so the pacing sets
		// the publishing rate: at the default 50 ms the slow client's
		// socket buffers take longer to fill than the fast client's read
		// deadline allows.
		o.FlushInterval = 2 * time.Millisecond
	})
	slow, _, err := dialWith(t, smallBufferDialer(), se.wsURL("?token="+viewerTok), nil)
	require.NoError(t, err)
	slow.send(map[string]any{"type": "subscribe"})
	fast := se.dial(t)
	fast.send(map[string]any{"type": "subscribe"})
	fastSnap := fast.next()

	// The fast client reads on its own goroutine.
	var (
		mu      sync.Mutex
		fastGot []uint64
		lastSeq = fastSnap.Seq
		readErr error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var m wsMsg
			if err := fast.conn.ReadJSON(&m); err != nil {
				mu.Lock()
				readErr = err
				mu.Unlock()
				return
			}
			mu.Lock()
			fastGot = append(fastGot, m.Seq)
			lastSeq = m.Seq
			mu.Unlock()
		}
	}()
	caughtUp := func(seq uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		return lastSeq >= seq
	}

	// The server registers a connection after the handshake the client saw
	// complete: until both are in, the loop below would not start at all.
	require.Eventually(t, func() bool { return se.hub.Clients() == 2 }, 10*time.Second, time.Millisecond)
	deadline := time.Now().Add(30 * time.Second)
	devs := []string{"tc-1", "tc-2", "rt-1"}
	for i := 0; se.hub.Clients() == 2; i++ {
		require.True(t, time.Now().Before(deadline), "the slow client was never dropped")
		for j := range 20 {
			se.reading(devs[j%3], telemetry.Value{Name: "payload_metric_with_a_long_name", Num: float64(i)},
				telemetry.Value{Name: "another_metric_with_a_long_name", Num: float64(j)})
		}
		// A fast client keeps up: wait for it before the next burst.
		seq := se.hub.Seq()
		for !caughtUp(seq) {
			require.True(t, time.Now().Before(deadline), "the fast client fell behind")
			time.Sleep(50 * time.Microsecond)
		}
	}
	require.Positive(t, se.counter(t, "infrawatch_stream_readings_coalesced_total", ""), "coalesced before dropped")
	require.Equal(t, 1.0, se.counter(t, "infrawatch_stream_clients_dropped_total", ""))

	// The slow client, reading at last, gets what was in flight, in order,
	// then 4000 "too slow".
	code, msgs := slow.closeCode()
	require.Equal(t, stream.CloseTooSlow, code)
	require.Equal(t, "snapshot", msgs[0].Type)
	for i := 1; i < len(msgs); i++ {
		require.Greater(t, msgs[i].Seq, msgs[i-1].Seq)
	}

	// The fast client received every event, in order, without a gap.
	final := se.hub.Seq()
	for !caughtUp(final) {
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, fast.conn.Close())
	<-done
	require.Error(t, readErr)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, fastGot, int(final-fastSnap.Seq))
	for i, s := range fastGot {
		require.Equal(t, fastSnap.Seq+uint64(i)+1, s)
	}
}

func TestStreamConsumeNeverBlocks(t *testing.T) {
	se := newStreamEnv(t, func(o *stream.Options) { o.QueueSize = 256 })
	stuck, _, err := dialWith(t, smallBufferDialer(), se.wsURL("?token="+viewerTok), nil)
	require.NoError(t, err)
	stuck.send(map[string]any{"type": "subscribe"})
	require.Eventually(t, func() bool {
		return se.counter(t, "infrawatch_stream_messages_sent_total", "snapshot") == 1
	}, 5*time.Second, time.Millisecond)

	batch := []telemetry.Reading{{DeviceID: "tc-1", Values: []telemetry.Value{{Name: "flow_vph", Num: 1}}}}
	start := time.Now()
	for i := range 100_000 {
		batch[0].DeviceID = []string{"tc-1", "tc-2", "rt-1"}[i%3]
		batch[0].Time = time.UnixMilli(int64(i))
		batch[0].Values[0].Num = float64(i) // ingest reuses its slices: the hub must have copied
		se.hub.Consume(batch)
	}
	elapsed := time.Since(start)
	require.Less(t, elapsed, 20*time.Second, "100k Consume calls with a stuck client")
	t.Logf("100k Consume calls in %s", elapsed)
	// The fan-out runs after Consume returned (at most once per flush
	// interval): the stuck client's readings are coalesced there.
	require.Eventually(t, func() bool {
		return se.counter(t, "infrawatch_stream_readings_coalesced_total", "") > 0
	}, 5*time.Second, 10*time.Millisecond, "the stuck client's readings coalesced")
}

func TestStreamShutdownAndRevocation(t *testing.T) {
	se := newStreamEnv(t, func(o *stream.Options) { o.PongWait = 200 * time.Millisecond })
	viewer := se.dial(t)
	viewer.send(map[string]any{"type": "subscribe"})
	require.Equal(t, "snapshot", viewer.next().Type)
	admin, _, err := dialWith(t, websocket.DefaultDialer, se.wsURL(""), http.Header{"Authorization": {"Bearer " + adminTok}})
	require.NoError(t, err)
	admin.send(map[string]any{"type": "subscribe"})
	require.Equal(t, "snapshot", admin.next().Type)
	// gorilla answers pings only while reading: the admin reads all along.
	adminMsgs := make(chan wsMsg, 16)
	adminCode := make(chan int, 1)
	go func() {
		for {
			var m wsMsg
			if err := admin.conn.ReadJSON(&m); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					adminCode <- ce.Code
				} else {
					adminCode <- -1
				}
				return
			}
			adminMsgs <- m
		}
	}()

	// Revoking the viewer's token ends its stream within a ping period.
	require.NoError(t, se.tokens.Delete(context.Background(), "t-viewer"))
	code, _ := viewer.closeCode()
	require.Equal(t, websocket.ClosePolicyViolation, code)
	require.Equal(t, 1.0, se.counter(t, "infrawatch_stream_clients_dropped_total", stream.DropRevoked))

	// The admin stays through several ping periods, until shutdown: 1001.
	time.Sleep(700 * time.Millisecond)
	se.reading("tc-1", telemetry.Value{Name: "v", Num: 1})
	select {
	case m := <-adminMsgs:
		require.Equal(t, "reading", m.Type)
	case c := <-adminCode:
		t.Fatalf("admin connection ended with %d", c)
	case <-time.After(5 * time.Second):
		t.Fatal("no reading")
	}
	se.hub.Close()
	require.Equal(t, websocket.CloseGoingAway, <-adminCode)
	require.Equal(t, 0.0, se.counter(t, "infrawatch_stream_clients", ""))

	// After Close, new connections are refused with 1001 at once.
	late, _, err := dialWith(t, websocket.DefaultDialer, se.wsURL("?token="+adminTok), nil)
	require.NoError(t, err)
	code, _ = late.closeCode()
	require.Equal(t, websocket.CloseGoingAway, code)
}

// batchesUntilSentinel is untilSentinel for a batch client: it checks that
// every event arrives inside a batch whose seq is its last event's, and
// returns the batches and their events, flattened.
func (c *wsClient) batchesUntilSentinel() (batches int, evs []wsMsg) {
	c.t.Helper()
	for _, m := range c.untilSentinel() {
		require.Equal(c.t, "batch", m.Type)
		require.NotEmpty(c.t, m.Events)
		require.Equal(c.t, m.Events[len(m.Events)-1].Seq, m.Seq, "a batch's seq is its last event's")
		batches++
		evs = append(evs, m.Events...)
	}
	return batches, evs
}

func TestStreamBatch(t *testing.T) {
	se := newStreamEnv(t, func(o *stream.Options) { o.QueueSize = 16 }) // coalesce above 8 per interval
	batch := se.dial(t)
	batch.send(map[string]any{"type": "subscribe", "batch": true})
	snap := batch.next()
	require.Equal(t, "snapshot", snap.Type, "the snapshot is its own message")
	plain := se.dial(t)
	plain.send(map[string]any{"type": "subscribe"})
	require.Equal(t, "snapshot", plain.next().Type)

	// A few events: all of them, in order, in as few messages as the
	// flush intervals they fell into.
	se.reading("tc-1", telemetry.Value{Name: "flow_vph", Num: 1260}, telemetry.Value{Name: "ice", Bool: true, IsBool: true})
	se.reading("tc-2", telemetry.Value{Name: "flow_vph", Num: 2})
	se.hub.Status(telemetry.StatusEvent{DeviceID: "rt-1", Status: "offline", Previous: "online", Time: time.Unix(0, 0)})
	se.hub.Alert(stream.AlertEvent{Transition: "firing", DeviceID: "tc-2", Alert: map[string]any{"id": "a1"}})
	se.reading("rt-1", telemetry.Value{Name: "util", Num: 0.5})
	n, evs := batch.batchesUntilSentinel()
	require.LessOrEqual(t, n, 2, "5 events published at once come in one batch (two if a flush fell between)")
	require.Len(t, evs, 5)
	for i, e := range evs {
		require.Equal(t, snap.Seq+uint64(i)+1, e.Seq)
	}
	require.Equal(t, []string{"reading", "reading", "status", "alert", "reading"},
		[]string{evs[0].Type, evs[1].Type, evs[2].Type, evs[3].Type, evs[4].Type})
	require.Equal(t, map[string]any{"flow_vph": 1260.0, "ice": true}, evs[0].Values)
	require.Equal(t, "offline", evs[2].Status)
	require.Equal(t, "a1", evs[3].Alert["id"])
	plainMsgs := plain.untilSentinel()
	require.Len(t, plainMsgs, 5, "an unbatched client gets one message per event")
	for i, m := range plainMsgs {
		require.Equal(t, evs[i].Seq, m.Seq)
		require.Equal(t, evs[i].Type, m.Type)
	}

	// More than CoalesceAbove in one interval: readings of a device are
	// coalesced to the newest (metrics merged), for both forms alike;
	// status events stay.
	base := se.hub.Seq()
	se.reading("tc-1", telemetry.Value{Name: "speed_kmh", Num: 50})
	for i := range 9 {
		se.reading("tc-1", telemetry.Value{Name: "flow_vph", Num: float64(i)})
	}
	se.hub.Status(telemetry.StatusEvent{DeviceID: "tc-2", Status: "stale", Previous: "online"})
	for i := range 10 {
		se.reading("tc-2", telemetry.Value{Name: "flow_vph", Num: float64(100 + i)})
	}
	_, evs = batch.batchesUntilSentinel()
	plainMsgs = plain.untilSentinel()
	require.Equal(t, len(evs), len(plainMsgs))
	for i := range evs {
		require.Equal(t, evs[i].Seq, plainMsgs[i].Seq)
	}
	if len(evs) == 3 { // all 21 in one interval (the usual case)
		require.Equal(t, []uint64{base + 10, base + 11, base + 21}, []uint64{evs[0].Seq, evs[1].Seq, evs[2].Seq})
		require.Equal(t, map[string]any{"flow_vph": 8.0, "speed_kmh": 50.0}, evs[0].Values)
		require.Equal(t, "stale", evs[1].Status)
		require.Equal(t, 109.0, evs[2].Values["flow_vph"])
		require.Equal(t, 36.0, se.counter(t, "infrawatch_stream_readings_coalesced_total", ""), "18 readings, 2 clients")
	}
	require.Equal(t, base+21, evs[len(evs)-1].Seq, "the newest reading always arrives")

	// A resume in batch mode replays in a batch.
	require.NoError(t, batch.conn.Close())
	se.reading("tc-2", telemetry.Value{Name: "flow_vph", Num: 7})
	se.reading("tc-1", telemetry.Value{Name: "flow_vph", Num: 8})
	again := se.dial(t)
	again.send(map[string]any{"type": "resume", "after": base + 21, "batch": true})
	n, evs = again.batchesUntilSentinel()
	require.Equal(t, 1, n)
	require.Equal(t, []uint64{base + 22, base + 23}, []uint64{evs[0].Seq, evs[1].Seq})
	require.Positive(t, se.counter(t, "infrawatch_stream_writes_total", ""))
}
