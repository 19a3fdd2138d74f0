package ingest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/store"
)

// missingDatabase is a store writing to a database InfluxDB does not have
// (createDatabase creates it), and an env to count what reaches it.
func missingDatabase(t *testing.T) (*env, *store.Store) {
	t.Helper()
	srv := testenv.Influx(t)
	db := testenv.NewDB(t)
	s, err := store.New(context.Background(), store.Options{URL: srv.URL, Bucket: db})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return &env{influx: srv, db: db, store: s}, s
}

// createDatabase creates e's database, as an operator would.
func createDatabase(t *testing.T, e *env) {
	t.Helper()
	s, err := store.New(context.Background(), store.Options{URL: e.influx.URL, Bucket: e.db, CreateDatabase: true})
	require.NoError(t, err)
	s.Close()
}

// TestMissingDatabaseHoldsTheMessage: InfluxDB answering 404 (database
// not found: dropped by hand, or not created yet) or 401/403 (a rotated
// token) says nothing about the readings. Such a batch must wait, its
// message unacknowledged, until InfluxDB takes it; dead-lettering and
// acknowledging it lost a reading the device was told was stored.
func TestMissingDatabaseHoldsTheMessage(t *testing.T) {
	e, s := missingDatabase(t)

	reg := registry{"c1": counter("c1", "traffic_counter")}
	local := &fakeLocal{}
	in, metrics, _ := runIngester(t, Options{Local: local, Lookup: reg.lookup, Writer: s,
		FlushInterval: 5 * time.Millisecond, RetryDelay: func(error, int) time.Duration { return 50 * time.Millisecond }})

	var acked atomic.Int64
	ts := time.Now().Add(-time.Minute).UnixMilli()
	require.True(t, in.Deliver("devices/c1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":7}}`, ts), func() { acked.Add(1) }))
	time.Sleep(500 * time.Millisecond) // several refused attempts
	assert.Zero(t, acked.Load(), "acknowledged although nothing was stored")
	assert.Empty(t, local.published(), "dead-lettered")

	// The database appears: the reading is stored, then acknowledged.
	createDatabase(t, e)
	e.waitCount(t, metrics, "traffic_counter", "flow_vph", 1)
	require.Eventually(t, func() bool { return acked.Load() == 1 }, 5*time.Second, time.Millisecond)
	assert.Zero(t, metricValue(t, metrics, "infrawatch_ingest_dropped_total", "reason", ReasonWriteRejected))
	assertAccounting(t, metrics)
}

// TestMissingDatabaseKeepsTheSpool: the same with a spool: the batch is
// spooled (and acknowledged), and the spool keeps it until InfluxDB takes
// it rather than dropping it on the first 404.
func TestMissingDatabaseKeepsTheSpool(t *testing.T) {
	e, s := missingDatabase(t)

	reg := registry{"c1": counter("c1", "traffic_counter")}
	local := &fakeLocal{}
	in, metrics, _ := runIngester(t, Options{Local: local, Lookup: reg.lookup, Writer: s, SpoolDir: t.TempDir(),
		SpoolMaxBytes: MinSpoolMaxBytes, FlushInterval: 5 * time.Millisecond,
		RetryDelay: func(error, int) time.Duration { return 50 * time.Millisecond }})

	var acked atomic.Int64
	ts := time.Now().Add(-time.Minute).UnixMilli()
	require.True(t, in.Deliver("devices/c1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":7}}`, ts), func() { acked.Add(1) }))
	require.Eventually(t, func() bool { return acked.Load() == 1 }, 5*time.Second, time.Millisecond, "spooled and acknowledged")
	time.Sleep(500 * time.Millisecond) // several refused replays
	assert.Empty(t, local.published(), "dead-lettered")
	assert.Equal(t, 1.0, metricValue(t, metrics, "infrawatch_ingest_messages_spooled", "", ""), dump(metrics))

	createDatabase(t, e)
	e.waitCount(t, metrics, "traffic_counter", "flow_vph", 1)
	assert.Zero(t, metricValue(t, metrics, "infrawatch_ingest_dropped_total", "reason", ReasonWriteRejected))
	assertAccounting(t, metrics)
}

// TestLargeReadingsStayUnderTheBodyLimit: readings with many metrics (a
// router's counters per interface) make a batch of BatchSize points tens
// of megabytes, over InfluxDB 1.8's default max-body-size of 25 MB. The
// 413 then dropped (and acknowledged) every message of the batch; batches
// must stay small enough in bytes, too.
func TestLargeReadingsStayUnderTheBodyLimit(t *testing.T) {
	e := &env{influx: testenv.Influx(t), db: testenv.NewDB(t)}
	s, err := store.New(context.Background(), store.Options{URL: e.influx.URL, Bucket: e.db, CreateDatabase: true})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	e.store = s
	reg := registry{"r1": counter("r1", "router")}
	local := &fakeLocal{}
	in, metrics, _ := runIngester(t, Options{Local: local, Lookup: reg.lookup, Writer: s, FlushInterval: 2 * time.Second,
		DeviceRateLimit: -1, MaxReadings: 10})

	// One reading of 3000 metrics: about 45 KB of JSON, 36 KB of line
	// protocol; 800 of them are 29 MB.
	const messages, metricsPer = 800, 3000
	var acked atomic.Int64
	base := time.Now().Add(-time.Hour).UnixMilli()
	for i := range messages {
		p := fmt.Appendf(nil, `{"ts":%d,"values":{`, base+int64(i)*1000)
		for m := range metricsPer {
			if m > 0 {
				p = append(p, ',')
			}
			p = fmt.Appendf(p, `"if%04d_x":%d.5`, m, i)
		}
		p = append(p, "}}"...)
		require.True(t, in.Deliver("devices/r1/telemetry", p, func() { acked.Add(1) }))
	}
	e.waitCount(t, metrics, "router", "if0000_x", messages)
	require.Eventually(t, func() bool { return acked.Load() == messages }, 20*time.Second, 10*time.Millisecond)
	assert.Zero(t, metricValue(t, metrics, "infrawatch_ingest_dropped_total", "reason", ReasonWriteRejected))
	assertAccounting(t, metrics)
}
