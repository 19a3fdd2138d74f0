package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopShared()
	os.Exit(code)
}

// registry is a fixed device registry for tests.
type registry map[string]*telemetry.Device

func (r registry) lookup(id string) (*telemetry.Device, bool) { d, ok := r[id]; return d, ok }

func counter(id, typ string) *telemetry.Device {
	return &telemetry.Device{ID: id, Slot: slotOf(id), Profile: &telemetry.Profile{Type: typ, Domain: "roads", Site: "a12", Lifecycle: telemetry.LifecycleActive, Interval: 10 * time.Second}}
}

// recorder is a Consumer and StatusSink that counts what it gets.
type recorder struct {
	mu       sync.Mutex
	readings int
	status   map[string]bool
}

func (r *recorder) Consume(rs []telemetry.Reading) {
	r.mu.Lock()
	r.readings += len(rs)
	r.mu.Unlock()
}

func (r *recorder) DeviceStatus(id string, online bool, _ time.Time) {
	r.mu.Lock()
	if r.status == nil {
		r.status = map[string]bool{}
	}
	r.status[id] = online
	r.mu.Unlock()
}

type env struct {
	broker *testenv.MosquittoServer
	influx *testenv.InfluxServer
	db     string
	store  *store.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, testenv.Mosquitto(t, testenv.MosquittoOptions{}))
}

// newEnvWith is newEnv with a broker of the test's own.
func newEnvWith(t *testing.T, broker *testenv.MosquittoServer) *env {
	t.Helper()
	e := &env{broker: broker, influx: testenv.Influx(t), db: testenv.NewDB(t)}
	s, err := store.New(context.Background(), store.Options{URL: e.influx.URL, Bucket: e.db, CreateDatabase: true})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	e.store = s
	return e
}

// start runs an Ingester until the returned stop is called (or the test
// ends) and waits until it is subscribed.
func (e *env) start(t *testing.T, o Options) (*Ingester, *prometheus.Registry, func()) {
	t.Helper()
	o.BrokerURL = e.broker.URL
	o.Writer = e.store
	if o.ClientID == "" {
		o.ClientID = "ingest-" + strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	}
	return runIngester(t, o)
}

// runIngester runs New(o) with a fresh metrics registry until the returned
// stop is called (or the test ends), and waits until it is connected.
func runIngester(t *testing.T, o Options) (*Ingester, *prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	in, err := New(o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				assert.NoError(t, err)
			case <-time.After(30 * time.Second):
				t.Error("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	require.Eventually(t, in.Connected, 10*time.Second, time.Millisecond)
	return in, reg, stop
}

func (e *env) client(t *testing.T, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(e.broker.URL).SetClientID(id).SetAutoReconnect(true))
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish(t testing.TB, c mqtt.Client, topic string, payload []byte, retained bool) {
	tok := c.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Errorf("publish to %s: %v", topic, tok.Error())
	}
}

// count returns the number of points of one field in a measurement.
func (e *env) count(t *testing.T, measurement, field string) int {
	t.Helper()
	q := fmt.Sprintf(`SELECT count(%q) FROM %q`, field, measurement)
	resp, err := http.Get(e.influx.URL + "/query?db=" + url.QueryEscape(e.db) + "&q=" + url.QueryEscape(q))
	require.NoError(t, err)
	defer resp.Body.Close()
	var r struct {
		Results []struct {
			Series []struct {
				Values [][]any `json:"values"`
			} `json:"series"`
			Error string `json:"error"`
		} `json:"results"`
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	require.NoError(t, dec.Decode(&r))
	if len(r.Results) == 0 || len(r.Results[0].Series) == 0 {
		return 0
	}
	n, err := r.Results[0].Series[0].Values[0][1].(json.Number).Int64()
	require.NoError(t, err)
	return int(n)
}

// waitCount waits until a field has n points.
func (e *env) waitCount(t *testing.T, reg *prometheus.Registry, measurement, field string, n int) {
	t.Helper()
	if !assert.Eventually(t, func() bool { return e.count(t, measurement, field) == n }, 20*time.Second, 50*time.Millisecond) {
		t.Fatalf("%s.%s has %d points, want %d; metrics: %s", measurement, field, e.count(t, measurement, field), n, dump(reg))
	}
}

// deadLetters subscribes to infrawatch/deadletter/# and collects what comes.
type deadLetters struct {
	mu   sync.Mutex
	got  []DeadLetter
	topc []string
}

func (e *env) deadLetters(t *testing.T) *deadLetters {
	d := &deadLetters{}
	c := e.client(t, "dl-watcher-"+fmt.Sprint(time.Now().UnixNano()))
	tok := c.Subscribe("infrawatch/deadletter/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		var dl DeadLetter
		if err := json.Unmarshal(m.Payload(), &dl); err != nil {
			t.Errorf("dead letter is not JSON: %v", err)
		}
		d.mu.Lock()
		d.got = append(d.got, dl)
		d.topc = append(d.topc, m.Topic())
		d.mu.Unlock()
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	return d
}

func (d *deadLetters) byReason(reason string) []DeadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []DeadLetter
	for i, dl := range d.got {
		if dl.Reason == reason && d.topc[i] == DeadLetterTopicPrefix+reason {
			out = append(out, dl)
		}
	}
	return out
}

func TestIngestStoresEveryReading(t *testing.T) {
	e := newEnv(t)
	const publishers, messages = 4, 150
	reg := registry{}
	for p := range publishers {
		reg[fmt.Sprintf("tc-%d", p)] = counter(fmt.Sprintf("tc-%d", p), "traffic_counter")
	}
	rec := &recorder{}
	_, metrics, _ := e.start(t, Options{Lookup: reg.lookup, Consumers: []telemetry.Consumer{rec}, Workers: 3, FlushInterval: 20 * time.Millisecond})

	base := time.Now().Add(-time.Hour).UnixMilli()
	var wg sync.WaitGroup
	var total atomic.Int64
	for p := range publishers {
		c := e.client(t, fmt.Sprintf("pub-%d", p))
		wg.Go(func() {
			ts := base
			for i := range messages {
				// 1 to 3 readings per message, a unique ts each.
				var rs []string
				for range i%3 + 1 {
					rs = append(rs, fmt.Sprintf(`{"ts":%d,"values":{"flow_vph":%d,"ok":true}}`, ts, i))
					ts += 10000 // the device's interval: within its rate
				}
				total.Add(int64(len(rs)))
				publish(t, c, fmt.Sprintf("devices/tc-%d/telemetry", p), []byte("["+strings.Join(rs, ",")+"]"), false)
			}
		})
	}
	wg.Wait()
	want := int(total.Load())
	t.Logf("published %d readings", want)

	if !assert.Eventually(t, func() bool { return e.count(t, "traffic_counter", "flow_vph") == want }, 20*time.Second, 100*time.Millisecond) {
		t.Fatalf("stored %d of %d; metrics %v", e.count(t, "traffic_counter", "flow_vph"), want, dump(metrics))
	}
	// A batch is counted once InfluxDB answered, just after its points
	// became visible to the query above.
	assert.Eventually(t, func() bool {
		return testutil.ToFloat64(mustCounter(t, metrics, "infrawatch_ingest_readings_stored_total")) == float64(want)
	}, 5*time.Second, 10*time.Millisecond, "readings_stored_total")
	assert.Equal(t, float64(want), testutil.ToFloat64(mustCounter(t, metrics, "infrawatch_ingest_readings_received_total")))
	assert.Equal(t, float64(publishers*messages), metricValue(t, metrics, "infrawatch_ingest_messages_total", "outcome", "stored"))
	rec.mu.Lock()
	assert.Equal(t, want, rec.readings)
	rec.mu.Unlock()
}

func TestIngestRejectsAndDeadLetters(t *testing.T) {
	e := newEnv(t)
	reg := registry{
		"tc-1":  counter("tc-1", "traffic_counter"),
		"slow":  {ID: "slow", Slot: slotOf("slow"), Profile: &telemetry.Profile{Type: "traffic_counter", Domain: "roads", Site: "a12", Lifecycle: "active", Interval: time.Hour}},
		"old":   {ID: "old", Slot: slotOf("old"), Profile: &telemetry.Profile{Type: "traffic_counter", Domain: "roads", Site: "a12", Lifecycle: telemetry.LifecycleRetired}},
		"gw-d1": {ID: "gw-d1", Slot: slotOf("gw-d1"), Profile: &telemetry.Profile{Type: "ups", Domain: "network", Site: "depot", Lifecycle: "active", GatewayID: "gw-1"}},
		"gw-d2": {ID: "gw-d2", Slot: slotOf("gw-d2"), Profile: &telemetry.Profile{Type: "ups", Domain: "network", Site: "depot", Lifecycle: "active", GatewayID: "gw-2"}},
	}
	rec := &recorder{}
	dls := e.deadLetters(t)
	_, metrics, _ := e.start(t, Options{Lookup: reg.lookup, Status: rec, Consumers: []telemetry.Consumer{rec},
		DeviceRateLimit: 1, DeviceBurst: 3, MaxReadings: 5})
	c := e.client(t, "pub")
	now := time.Now().UnixMilli()

	cases := []struct {
		topic, payload, reason, device string
	}{
		{"devices/tc-1/telemetry", `{"values":`, ReasonMalformedJSON, "tc-1"},
		{"devices/tc-1/telemetry", "{\"values\":{\"a\":1},\"x\":\"\xff\xfe\"}", ReasonMalformedJSON, "tc-1"},
		{"devices/tc-1/telemetry", `{"values":{"flow_vph":"high"}}`, ReasonBadValue, "tc-1"},
		{"devices/tc-1/telemetry", `{"values":{"Flow":1}}`, ReasonBadMetric, "tc-1"},
		{"devices/tc-1/telemetry", `{"ts":1000,"values":{"flow_vph":1}}`, ReasonBadTimestamp, "tc-1"},
		{"devices/tc-1/telemetry", `[{"values":{"a":1}},{"values":{"a":1}},{"values":{"a":1}},{"values":{"a":1}},{"values":{"a":1}},{"values":{"a":1}}]`, ReasonTooLarge, "tc-1"},
		{"devices/nobody/telemetry", `{"values":{"a":1}}`, ReasonUnknownDevice, "nobody"},
		{"devices/old/telemetry", `{"values":{"a":1}}`, ReasonRetired, "old"},
		{"gateways/gw-1/telemetry", `{"gw-d2":[{"values":{"soc_pct":90}}]}`, ReasonNotAssigned, "gw-d2"},
	}
	for _, tc := range cases {
		publish(t, c, tc.topic, []byte(tc.payload), false)
	}
	// Four messages from a device expected hourly, with a burst of 3.
	for i := range 4 {
		publish(t, c, "devices/slow/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, now-int64(i), i), false)
	}
	// A mixed message: two good readings stored, two bad dead-lettered.
	publish(t, c, "devices/tc-1/telemetry", fmt.Appendf(nil,
		`[{"ts":%d,"values":{"speed_kmh":50}},{"values":{"speed_kmh":"x"}},{"ts":%d,"values":{"speed_kmh":51}},{"values":{"speed_kmh":"y"}}]`, now-1000, now-2000), false)
	// A gateway message with one assigned device and one not.
	publish(t, c, "gateways/gw-1/telemetry", []byte(`{"gw-d1":[{"values":{"soc_pct":80}}],"gw-d2":[{"values":{"soc_pct":70}}]}`), false)
	// Status, retained as devices publish it.
	publish(t, c, "devices/tc-1/status", []byte("online"), true)
	publish(t, c, "devices/slow/status", []byte("offline"), true)

	for _, tc := range cases {
		require.Eventually(t, func() bool {
			for _, dl := range dls.byReason(tc.reason) {
				if dl.DeviceID == tc.device && dl.Topic == tc.topic {
					return true
				}
			}
			return false
		}, 10*time.Second, 20*time.Millisecond, "dead letter %s for %s", tc.reason, tc.topic)
	}
	require.Eventually(t, func() bool { return len(dls.byReason(ReasonRateLimited)) == 1 }, 10*time.Second, 20*time.Millisecond)
	e.waitCount(t, metrics, "traffic_counter", "speed_kmh", 2)
	e.waitCount(t, metrics, "traffic_counter", "flow_vph", 3)
	e.waitCount(t, metrics, "ups", "soc_pct", 1)

	// The dead letter carries the original payload; invalid UTF-8 as base64.
	for _, dl := range dls.byReason(ReasonMalformedJSON) {
		if dl.PayloadEncoding == "base64" {
			raw, err := base64.StdEncoding.DecodeString(dl.Payload)
			require.NoError(t, err)
			assert.Equal(t, cases[1].payload, string(raw))
		} else {
			assert.Equal(t, cases[0].payload, dl.Payload)
		}
		assert.False(t, dl.ReceivedAt.IsZero())
	}
	// The mixed message: one dead letter for its two bad readings.
	var mixed []DeadLetter
	for _, dl := range dls.byReason(ReasonBadValue) {
		if dl.Readings == 2 {
			mixed = append(mixed, dl)
		}
	}
	require.Len(t, mixed, 1)
	assert.Contains(t, mixed[0].Error, "2 readings rejected")

	wantRejected := map[string]float64{ReasonMalformedJSON: 2, ReasonBadValue: 2, ReasonBadMetric: 1, ReasonBadTimestamp: 1,
		ReasonTooLarge: 1, ReasonUnknownDevice: 1, ReasonRetired: 1, ReasonNotAssigned: 2, ReasonRateLimited: 1}
	for reason, n := range wantRejected {
		assert.Equal(t, n, metricValue(t, metrics, "infrawatch_ingest_rejected_total", "reason", reason), reason)
	}
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.status) == 2
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, map[string]bool{"tc-1": true, "slow": false}, rec.status)

	// Accounting: every reading received is stored, rejected or dropped.
	// Eventually: InfluxDB shows the points before its answer reaches the
	// writer, which counts them then.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		received := testutil.ToFloat64(mustCounter(t, metrics, "infrawatch_ingest_readings_received_total"))
		stored := testutil.ToFloat64(mustCounter(t, metrics, "infrawatch_ingest_readings_stored_total"))
		var rejected float64
		for _, r := range rejectReasons {
			rejected += metricValue(t, metrics, "infrawatch_ingest_readings_rejected_total", "reason", r)
		}
		assert.Equal(c, received, stored+rejected, "received %v stored %v rejected %v", received, stored, rejected)
	}, 10*time.Second, 20*time.Millisecond)
}

func TestIngestWriteRejectedIsDroppedAndAcked(t *testing.T) {
	e := newEnv(t)
	reg := registry{"tc-1": counter("tc-1", "traffic_counter")}
	dls := e.deadLetters(t)
	_, metrics, _ := e.start(t, Options{Lookup: reg.lookup})
	c := e.client(t, "pub")
	publish(t, c, "devices/tc-1/telemetry", []byte(`{"values":{"flow_vph":1}}`), false)
	require.Eventually(t, func() bool { return e.count(t, "traffic_counter", "flow_vph") == 1 }, 10*time.Second, 50*time.Millisecond)
	// Now a boolean for a float field: InfluxDB refuses it (field type
	// conflict, 400). It must be dropped and dead-lettered, not retried.
	publish(t, c, "devices/tc-1/telemetry", []byte(`{"values":{"flow_vph":true}}`), false)
	require.Eventually(t, func() bool { return len(dls.byReason(ReasonWriteRejected)) == 1 }, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, 1.0, metricValue(t, metrics, "infrawatch_ingest_dropped_total", "reason", ReasonWriteRejected))
	assert.Equal(t, 1.0, metricValue(t, metrics, "infrawatch_ingest_messages_total", "outcome", "dropped"))
	// And the pipeline goes on.
	publish(t, c, "devices/tc-1/telemetry", []byte(`{"values":{"flow_vph":2}}`), false)
	require.Eventually(t, func() bool { return e.count(t, "traffic_counter", "flow_vph") == 2 }, 10*time.Second, 50*time.Millisecond)
}

// TestIngestRestartLosesNothing stops the ingester while publishers go on
// at QoS 1; a new ingester with the same client id gets the backlog from
// the persistent session.
func TestIngestRestartLosesNothing(t *testing.T) {
	e := newEnv(t)
	const publishers, messages = 3, 300
	reg := registry{}
	for p := range publishers {
		reg[fmt.Sprintf("tc-%d", p)] = counter(fmt.Sprintf("tc-%d", p), "traffic_counter")
	}
	o := Options{Lookup: reg.lookup, ClientID: "ingest-restart"}
	_, _, stop := e.start(t, o)

	base := time.Now().Add(-time.Hour).UnixMilli()
	var sent atomic.Int64
	var wg sync.WaitGroup
	for p := range publishers {
		c := e.client(t, fmt.Sprintf("pub-%d", p))
		wg.Go(func() {
			for i := range messages {
				publish(t, c, fmt.Sprintf("devices/tc-%d/telemetry", p), fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, base+int64(i)*10000, i), false)
				sent.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	require.Eventually(t, func() bool { return sent.Load() > publishers*messages/4 }, 10*time.Second, 5*time.Millisecond)
	stop()
	stoppedAt := sent.Load()
	time.Sleep(200 * time.Millisecond) // publishers go on while ingest is away
	_, metrics, _ := e.start(t, o)
	wg.Wait()
	require.Less(t, stoppedAt, int64(publishers*messages), "publishers finished before the restart")
	require.Eventually(t, func() bool { return e.count(t, "traffic_counter", "flow_vph") == publishers*messages }, 30*time.Second, 100*time.Millisecond)
	assert.Positive(t, testutil.ToFloat64(mustCounter(t, metrics, "infrawatch_ingest_readings_stored_total")))
}

// TestIngestWaitsForInflux stops InfluxDB: batches are retried, nothing is
// acknowledged or lost, and all is stored once it is back.
func TestIngestWaitsForInflux(t *testing.T) {
	broker := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	influx := testenv.OwnInflux(t)
	e := &env{broker: broker, influx: influx, db: "waits"}
	s, err := store.New(context.Background(), store.Options{URL: influx.URL, Bucket: e.db, CreateDatabase: true, Timeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	e.store = s
	reg := registry{"tc-1": counter("tc-1", "traffic_counter")}
	_, metrics, _ := e.start(t, Options{Lookup: reg.lookup, RetryDelay: func(error, int) time.Duration { return 100 * time.Millisecond }})
	c := e.client(t, "pub")
	influx.Stop()
	base := time.Now().Add(-time.Minute).UnixMilli()
	for i := range 50 {
		publish(t, c, "devices/tc-1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, base+int64(i), i), false)
	}
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(mustCounter(t, metrics, "infrawatch_ingest_write_retries_total")) >= 2
	}, 20*time.Second, 50*time.Millisecond)
	require.NoError(t, influx.Start(context.Background()))
	require.Eventually(t, func() bool { return e.count(t, "traffic_counter", "flow_vph") == 50 }, 30*time.Second, 100*time.Millisecond)
	assert.Zero(t, metricValue(t, metrics, "infrawatch_ingest_dropped_total", "reason", ReasonWriteRejected))
}

func TestNewValidates(t *testing.T) {
	_, err := New(Options{ClientID: "bad id", QueueSize: -1, SharedGroup: "a/b"})
	require.Error(t, err)
	for _, field := range []string{"BrokerURL", "ClientID", "Lookup", "Writer", "QueueSize", "SharedGroup"} {
		assert.Contains(t, err.Error(), field)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return collectorFunc(func() float64 { return metricValue(t, reg, name, "", "") })
}

// metricValue sums the samples of a metric, those with label=value when
// label is set.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
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

// collectorFunc adapts a value to testutil.ToFloat64.
type collectorFunc func() float64

func (f collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	ch <- prometheus.NewDesc("value", "test", nil, nil)
}

func (f collectorFunc) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("value", "test", nil, nil), prometheus.UntypedValue, f())
}

func dump(reg *prometheus.Registry) string {
	mfs, _ := reg.Gather()
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if v != 0 {
				fmt.Fprintf(&b, "%s%v=%v ", mf.GetName(), m.GetLabel(), v)
			}
		}
	}
	return b.String()
}
