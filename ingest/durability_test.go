package ingest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// assertAccounting checks received + recovered = stored + rejected +
// dropped + pending + spooled, and, quiescent, pending = spooled = 0.
func assertAccounting(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	v := func(name string) float64 { return metricValue(t, reg, "infrawatch_ingest_"+name, "", "") }
	require.Eventually(t, func() bool { return v("messages_pending") == 0 && v("messages_spooled") == 0 },
		20*time.Second, 20*time.Millisecond, "quiescence: %s", dump(reg))
	assert.Equal(t, v("messages_received_total")+v("messages_recovered_total"),
		v("messages_stored_total")+v("messages_rejected_total")+v("messages_dropped_total"), dump(reg))
}

// TestIngestSpoolsWhileInfluxIsDown: with a spool, messages are
// acknowledged once on disk while InfluxDB is down, and stored, in full,
// when it is back.
func TestIngestSpoolsWhileInfluxIsDown(t *testing.T) {
	broker := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	influx := testenv.OwnInflux(t)
	e := &env{broker: broker, influx: influx, db: "spooled"}
	s, err := store.New(context.Background(), store.Options{URL: influx.URL, Bucket: e.db, CreateDatabase: true, Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	e.store = s
	reg := registry{"tc-1": counter("tc-1", "traffic_counter")}
	_, metrics, _ := e.start(t, Options{Lookup: reg.lookup, SpoolDir: t.TempDir(), SpoolMaxBytes: MinSpoolMaxBytes,
		RetryDelay: func(error, int) time.Duration { return 100 * time.Millisecond }})
	c := e.client(t, "pub")
	influx.Stop()
	base := time.Now().Add(-time.Hour).UnixMilli()
	for i := range 200 {
		publish(t, c, "devices/tc-1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, base+int64(i)*10000, i), false)
	}
	// Acknowledged while InfluxDB is down: all of them are in the spool.
	require.Eventually(t, func() bool {
		return metricValue(t, metrics, "infrawatch_ingest_messages_spooled", "", "") == 200
	}, 20*time.Second, 20*time.Millisecond, dump(metrics))
	require.Zero(t, metricValue(t, metrics, "infrawatch_ingest_influx_up", "", ""))
	require.NoError(t, influx.Start(context.Background()))
	e.waitCount(t, metrics, "traffic_counter", "flow_vph", 200)
	assertAccounting(t, metrics)
	assert.Equal(t, 1.0, metricValue(t, metrics, "infrawatch_ingest_influx_up", "", ""))
}

// TestIngestReplayDeadLetters: an unknown device's messages are kept, and
// replayed after it is registered.
func TestIngestReplayDeadLetters(t *testing.T) {
	e := newEnv(t)
	reg := registry{"tc-1": counter("tc-1", "traffic_counter")}
	var mu sync.Mutex
	known := map[string]*telemetry.Device{}
	lookup := func(id string) (*telemetry.Device, bool) {
		if d, ok := reg[id]; ok {
			return d, true
		}
		mu.Lock()
		defer mu.Unlock()
		d, ok := known[id]
		return d, ok
	}
	in, metrics, _ := e.start(t, Options{Lookup: lookup, MaxPayloadBytes: 1024})
	c := e.client(t, "pub")
	base := time.Now().Add(-time.Minute).UnixMilli()
	for i := range 5 {
		publish(t, c, "devices/new-1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, base+int64(i)*1000, i), false)
	}
	publish(t, c, "devices/tc-1/telemetry", make([]byte, 5000), false) // too_large, cut in the store
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		dls := in.DeadLetters(DeadLetterFilter{})
		reasons := make([]string, len(dls))
		for i, dl := range dls {
			reasons[i] = dl.DeviceID + ":" + dl.Reason
		}
		assert.Len(c, dls, 6, "dead letters: %v; %s", reasons, dump(metrics))
	}, 10*time.Second, 20*time.Millisecond)
	big := in.DeadLetters(DeadLetterFilter{Reason: ReasonTooLarge})
	require.Len(t, big, 1)
	require.True(t, big[0].PayloadTruncated)
	require.Len(t, big[0].Payload, 1024)
	require.False(t, big[0].Replayable)
	list := in.DeadLetters(DeadLetterFilter{DeviceID: "new-1"})
	require.Len(t, list, 5)
	require.Equal(t, ReasonUnknownDevice, list[0].Reason)

	mu.Lock()
	known["new-1"] = counter("new-1", "traffic_counter")
	mu.Unlock()
	res, err := in.ReplayDeadLetters(context.Background(), ReplaySelector{Reason: ReasonUnknownDevice})
	require.NoError(t, err)
	require.Equal(t, 5, res.Replayed)
	e.waitCount(t, metrics, "traffic_counter", "flow_vph", 5)
	require.Empty(t, in.DeadLetters(DeadLetterFilter{DeviceID: "new-1"}))
	// The replayed ones left the store, and its gauge.
	require.Equal(t, 1.0, metricValue(t, metrics, "infrawatch_ingest_deadletters_stored", "", ""))
	res, err = in.ReplayDeadLetters(context.Background(), ReplaySelector{IDs: []uint64{big[0].ID, 12345}})
	require.NoError(t, err)
	require.Equal(t, ReplayResult{NotFound: []uint64{12345}, NotReplayable: []uint64{big[0].ID}}, res)
	assertAccounting(t, metrics)
}
