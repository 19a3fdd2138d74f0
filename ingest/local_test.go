package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// fakeLocal is a LocalBroker that records the dead letters published.
type fakeLocal struct {
	mu     sync.Mutex
	topics []string
}

func (f *fakeLocal) Publish(topic string, _ []byte) error {
	f.mu.Lock()
	f.topics = append(f.topics, topic)
	f.mu.Unlock()
	return nil
}

func (f *fakeLocal) published() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.topics...)
}

// gateWriter counts points written and batches in flight; while gate is
// set, writes wait for it to be closed.
type gateWriter struct {
	gate     chan struct{}
	points   atomic.Int64
	inFlight atomic.Int64
	maxIn    atomic.Int64
}

func (w *gateWriter) WriteLines(ctx context.Context, _ []byte, points int) error {
	n := w.inFlight.Add(1)
	defer w.inFlight.Add(-1)
	for {
		m := w.maxIn.Load()
		if n <= m || w.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	if w.gate != nil {
		select {
		case <-w.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.points.Add(int64(points))
	return nil
}

func startLocal(t *testing.T, o Options) (*Ingester, func()) {
	t.Helper()
	in, _, stop := runIngester(t, o)
	return in, stop
}

// TestDeliverAcksWhenStored: in process, a message's ack is called only
// once its readings are written; a rejected message is acked (its dead
// letter is final) and published through Local; status messages reach the
// sink; once Run ends Deliver takes nothing.
func TestDeliverAcksWhenStored(t *testing.T) {
	reg := registry{"c1": counter("c1", "traffic_counter")}
	w := &gateWriter{gate: make(chan struct{})}
	local := &fakeLocal{}
	rec := &recorder{}
	in, stop := startLocal(t, Options{
		Local: local, Lookup: reg.lookup, Writer: w, Consumers: []telemetry.Consumer{rec}, Status: rec,
		FlushInterval: 5 * time.Millisecond,
	})

	var acked atomic.Int64
	var pointsAtAck atomic.Int64
	ack := func() { pointsAtAck.Store(w.points.Load()); acked.Add(1) }
	now := time.Now().UnixMilli()
	require.True(t, in.Deliver("devices/c1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":1}}`, now), ack))
	time.Sleep(100 * time.Millisecond)
	assert.Zero(t, acked.Load(), "acked before the write finished")
	close(w.gate)
	require.Eventually(t, func() bool { return acked.Load() == 1 }, 5*time.Second, time.Millisecond)
	assert.EqualValues(t, 1, pointsAtAck.Load(), "the point was written before the ack")

	var rejectedAck atomic.Bool
	require.True(t, in.Deliver("devices/c1/telemetry", []byte(`{"values":`), func() { rejectedAck.Store(true) }))
	require.Eventually(t, rejectedAck.Load, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return len(local.published()) == 1 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, DeadLetterTopicPrefix+ReasonMalformedJSON, local.published()[0])

	require.True(t, in.Deliver("devices/c1/status", []byte("online"), nil))
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.status["c1"]
	}, 5*time.Second, time.Millisecond)

	stop()
	assert.False(t, in.Deliver("devices/c1/telemetry", []byte(`{"values":{"flow_vph":1}}`), func() { t.Error("acked after Run") }))
}

// idConsumer keeps the device ids of the readings it is given, as live
// state and the stream hub do.
type idConsumer struct {
	mu  sync.Mutex
	ids []string
}

func (c *idConsumer) Consume(rs []telemetry.Reading) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rs {
		c.ids = append(c.ids, r.DeviceID)
	}
}

// TestReadingIDsOwnNoPacket: the embedded broker hands Deliver a topic that
// shares memory with the packet it read (mochi decodes strings without
// copying), so whatever keeps a piece of the topic keeps the whole packet.
// The device id the consumers keep must be the registry's: when the
// packet's bytes change afterwards, the ids they hold do not.
func TestReadingIDsOwnNoPacket(t *testing.T) {
	reg := registry{"c1": counter("c1", "traffic_counter")}
	ids := &idConsumer{}
	in, _ := startLocal(t, Options{Local: &fakeLocal{}, Lookup: reg.lookup, Writer: &gateWriter{}, Consumers: []telemetry.Consumer{ids}})
	packet := []byte("devices/c1/telemetry")
	topic := unsafe.String(&packet[0], len(packet))
	acked := make(chan struct{})
	require.True(t, in.Deliver(topic, []byte(`{"values":{"flow_vph":1}}`), func() { close(acked) }))
	select {
	case <-acked:
	case <-time.After(5 * time.Second):
		t.Fatal("not acknowledged")
	}
	copy(packet, "devices/XX/telemetry")
	ids.mu.Lock()
	defer ids.mu.Unlock()
	require.Equal(t, []string{"c1"}, ids.ids)
}

// TestWriteConcurrency: up to WriteConcurrency batches are in flight at
// once, every message is acknowledged after its own batch, and the
// acknowledgements leave in the order the messages came.
func TestWriteConcurrency(t *testing.T) {
	reg := registry{}
	for i := range 20 {
		id := fmt.Sprintf("c%d", i)
		reg[id] = counter(id, "traffic_counter")
	}
	w := &gateWriter{gate: make(chan struct{})}
	in, _ := startLocal(t, Options{
		Local: &fakeLocal{}, Lookup: reg.lookup, Writer: w, WriteConcurrency: 3,
		BatchSize: 1, DeviceRateLimit: -1,
	})
	var acked atomic.Int64
	var mu sync.Mutex
	var order []int
	now := time.Now().UnixMilli()
	for i := range 20 {
		require.True(t, in.Deliver(fmt.Sprintf("devices/c%d/telemetry", i),
			fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, now, i), func() {
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				acked.Add(1)
			}))
	}
	require.Eventually(t, func() bool { return w.inFlight.Load() == 3 }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	assert.EqualValues(t, 3, w.maxIn.Load(), "batches in flight")
	assert.Zero(t, acked.Load())
	close(w.gate)
	require.Eventually(t, func() bool { return acked.Load() == 20 }, 5*time.Second, time.Millisecond)
	assert.EqualValues(t, 20, w.points.Load())
	mu.Lock()
	defer mu.Unlock()
	assert.IsIncreasing(t, order, "acknowledged in the order the messages came")
}

// discardWriter takes every batch, after delay.
type discardWriter struct {
	delay  time.Duration
	points atomic.Int64
}

func (w *discardWriter) WriteLines(_ context.Context, _ []byte, points int) error {
	if w.delay > 0 {
		time.Sleep(w.delay)
	}
	w.points.Add(int64(points))
	return nil
}

// runPipeline delivers b.N one-reading messages of 100 devices from
// parallel goroutines (as the broker's client goroutines do) and waits for
// every ack. deliver is the way in.
func runPipeline(b *testing.B, o Options, deliver func(in *Ingester, topic string, payload []byte, ack func())) {
	reg := registry{}
	const devices = 100
	topics := make([]string, devices)
	for i := range devices {
		id := fmt.Sprintf("tc-%04d", i)
		reg[id] = counter(id, "traffic_counter")
		topics[i] = "devices/" + id + "/telemetry"
	}
	payload := fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":1260,"speed_kmh":54.5,"occupancy_pct":12.25}}`, time.Now().UnixMilli())
	o.Local, o.Lookup, o.DeviceRateLimit = &fakeLocal{}, reg.lookup, -1
	o.Registerer, o.Logger = prometheus.NewRegistry(), slog.New(slog.DiscardHandler)
	in, err := New(o)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	var acked, n atomic.Int64
	ack := func() { acked.Add(1) }
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			deliver(in, topics[i%devices], payload, ack)
		}
	})
	for acked.Load() < n.Load() {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cancel()
	require.NoError(b, <-done)
}

// BenchmarkIngestPipeline measures ingest's whole hot path per message:
// decode, checks, encode, batching, the (instant) write and the ack.
// "inline" is Deliver (the embedded broker's way in: processed on the
// caller's goroutine); "workers" hands the message to the worker
// goroutines as the MQTT client's handler does.
func BenchmarkIngestPipeline(b *testing.B) {
	b.Run("inline", func(b *testing.B) {
		runPipeline(b, Options{Writer: &discardWriter{}}, func(in *Ingester, topic string, payload []byte, ack func()) {
			in.Deliver(topic, payload, ack)
		})
	})
	b.Run("workers", func(b *testing.B) {
		runPipeline(b, Options{Writer: &discardWriter{}}, func(in *Ingester, topic string, payload []byte, ack func()) {
			_, id := parseTopic(topic)
			m := &localMessage{topic: topic, payload: payload, ack: ack}
			in.inbox[shard(id, len(in.inbox))] <- inboxItem{m: m}
		})
	})
}

// BenchmarkWriteConcurrency: throughput when a write takes 20 ms (about
// what InfluxDB took per batch in the bench), with 1 and 3 batches in
// flight.
func BenchmarkWriteConcurrency(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			runPipeline(b, Options{Writer: &discardWriter{delay: 20 * time.Millisecond}, WriteConcurrency: n, BatchSize: 1000},
				func(in *Ingester, topic string, payload []byte, ack func()) { in.Deliver(topic, payload, ack) })
		})
	}
}
