package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// flakyReceiver is a webhook receiver that answers 503 until it is made
// healthy, and keeps what it accepted.
type flakyReceiver struct {
	srv     *httptest.Server
	healthy atomic.Bool
	tries   atomic.Int32

	mu  sync.Mutex
	got []delivered
}

type delivered struct {
	id      string // X-Infrawatch-Delivery
	payload payload
}

func newFlakyReceiver(t *testing.T) *flakyReceiver {
	r := &flakyReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.tries.Add(1)
		if !r.healthy.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		var p payload
		if err := json.Unmarshal(b, &p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, delivered{id: req.Header.Get("X-Infrawatch-Delivery"), payload: p})
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *flakyReceiver) deliveries() []delivered {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivered(nil), r.got...)
}

// life is one run of infrawatch's alerting on a database: the engine and a
// webhook notifier wired as cmd/infrawatch wires them, stopped in the same
// order (the engine's Run ends, then the notifiers are closed).
type life struct {
	e    *Engine
	wh   *WebhookNotifier
	stop func()
}

func startLife(t *testing.T, path string, clk *clock, reg *registry, pub Publisher) *life {
	t.Helper()
	ctx := context.Background()
	db := openDB(t, path)
	st, err := NewSQLiteStore(ctx, db)
	require.NoError(t, err)
	// Retries go on long enough that shutdown finds them unfinished.
	wh, err := NewWebhookNotifier(WebhookOptions{Secret: secret, Registerer: prometheus.NewRegistry(),
		Retry: RetryPolicy{Attempts: 1000, Base: 5 * time.Millisecond, Max: 20 * time.Millisecond}})
	require.NoError(t, err)
	notifiers := []Notifier{wh}
	var mq *MQTTNotifier
	if pub != nil {
		mq, err = NewMQTTNotifier(MQTTOptions{Publisher: pub, Registerer: prometheus.NewRegistry(),
			Retry: RetryPolicy{Attempts: 1000, Base: 5 * time.Millisecond, Max: 20 * time.Millisecond}})
		require.NoError(t, err)
		notifiers = append(notifiers, mq)
	}
	e, err := NewEngine(ctx, Options{Lookup: reg.lookup, Store: st, Notifiers: notifiers,
		Now: clk.now, Registerer: prometheus.NewRegistry(), TickInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); e.Run(runCtx) }()
	var once sync.Once
	l := &life{e: e, wh: wh, stop: func() {
		once.Do(func() {
			cancel()
			<-done
			wh.Close()
			if mq != nil {
				mq.Close()
			}
			require.NoError(t, db.Close())
		})
	}}
	t.Cleanup(l.stop)
	return l
}

// A notification still being retried when infrawatch stops is delivered
// after the restart, once, with the delivery id of the first attempts.
func TestNotificationSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "infrawatch.db")
	clk := &clock{t: t0}
	reg := newRegistry(dev("d1", "north"))
	rcv := newFlakyReceiver(t)

	// First life: the alert fires while the receiver is down.
	l1 := startLife(t, path, clk, reg, nil)
	_, err := l1.e.CreateRule(context.Background(), Rule{Name: "hot", Enabled: true, Kind: KindThreshold, Metric: "x",
		Op: ">", Value: 80, Notify: Notify{Webhooks: []string{rcv.srv.URL}}})
	require.NoError(t, err)
	l1.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	require.Eventually(t, func() bool { return rcv.tries.Load() >= 2 }, 5*time.Second, time.Millisecond,
		"the webhook is being retried")
	l1.stop()
	require.Empty(t, rcv.deliveries())

	// Second life: the receiver is back.
	rcv.healthy.Store(true)
	clk.set(at(time.Minute))
	l2 := startLife(t, path, clk, reg, nil)
	require.Eventually(t, func() bool { return len(rcv.deliveries()) >= 1 }, 5*time.Second, time.Millisecond,
		"the page lost across the restart never arrived")
	got := rcv.deliveries()[0]
	assert.Equal(t, TransitionFiring, got.payload.Transition)
	assert.Equal(t, "d1", got.payload.Alert.DeviceID)
	assert.Equal(t, got.id, got.payload.Delivery, "the payload carries the delivery id for MQTT receivers")
	open := l2.e.ListAlerts(AlertFilter{})
	require.Len(t, open, 1)
	assert.Equal(t, open[0].ID, got.payload.Alert.ID)
	time.Sleep(50 * time.Millisecond) // a second delivery would have come by now
	l2.stop()

	// Third life: it was delivered, and is not sent again.
	clk.set(at(2 * time.Minute))
	l3 := startLife(t, path, clk, reg, nil)
	time.Sleep(100 * time.Millisecond)
	l3.stop()
	assert.Len(t, rcv.deliveries(), 1, "delivered exactly once")
}

// After a restart only the destinations that still owe a notification get
// it: not the receiver that had it, not the one that refused it (4xx),
// not MQTT that had it.
func TestRestartResendsOnlyToUnfinishedDestinations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "infrawatch.db")
	clk := &clock{t: t0}
	reg := newRegistry(dev("d1", "north"))
	down, up := newFlakyReceiver(t), newFlakyReceiver(t)
	up.healthy.Store(true)
	var refused atomic.Int32
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refused.Add(1)
		http.Error(w, "unknown hook", http.StatusNotFound)
	}))
	defer refuse.Close()
	pub := &publisher{}

	l1 := startLife(t, path, clk, reg, pub)
	_, err := l1.e.CreateRule(context.Background(), Rule{Name: "hot", Enabled: true, Kind: KindThreshold, Metric: "x",
		Op: ">", Value: 80, Notify: Notify{Webhooks: []string{down.srv.URL, up.srv.URL, refuse.URL}, MQTT: true}})
	require.NoError(t, err)
	l1.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	require.Eventually(t, func() bool {
		return down.tries.Load() >= 2 && len(up.deliveries()) == 1 && refused.Load() == 1 && len(pub.topics()) == 1
	}, 5*time.Second, time.Millisecond)
	// The finished destinations reach the Store before shutdown.
	require.Eventually(t, func() bool {
		ds, err := l1.e.o.Store.LoadDeliveries(context.Background())
		require.NoError(t, err)
		return len(ds) == 1 && len(ds[0].Notification.Webhooks) == 1 && !ds[0].Notification.MQTT
	}, 5*time.Second, time.Millisecond)
	l1.stop()

	down.healthy.Store(true)
	l2 := startLife(t, path, clk, reg, pub)
	require.Eventually(t, func() bool { return len(down.deliveries()) == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	l2.stop()
	assert.Len(t, up.deliveries(), 1)
	assert.Equal(t, int32(1), refused.Load())
	assert.Len(t, pub.topics(), 1)
	assert.Equal(t, up.deliveries()[0].id, down.deliveries()[0].id, "one delivery id for one notification")
}

// What the last run left undelivered is sent again only within
// RedeliverWithin; older entries are deleted, not sent.
func TestRedeliveryIsBounded(t *testing.T) {
	ctx := context.Background()
	st, err := NewSQLiteStore(ctx, openDB(t, filepath.Join(t.TempDir(), "infrawatch.db")))
	require.NoError(t, err)
	n := func(dev string) Notification {
		return Notification{Transition: TransitionFiring, Alert: Alert{ID: "a-" + dev, DeviceID: dev, State: StateFiring},
			Webhooks: []string{"http://127.0.0.1:1/hook"}, Key: "k-" + dev}
	}
	require.NoError(t, st.SaveDeliveries(ctx, []Delivery{
		{Key: "k-old", At: at(-2 * time.Hour), Notification: n("old")},
		{Key: "k-new", At: at(-10 * time.Minute), Notification: n("new")},
	}, nil))

	rec := &recorder{}
	e, err := NewEngine(ctx, Options{Lookup: newRegistry().lookup, Store: st, Notifiers: []Notifier{rec},
		Now: func() time.Time { return t0 }, Registerer: prometheus.NewRegistry(), RedeliverWithin: time.Hour})
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); e.Run(runCtx) }()
	require.Eventually(t, func() bool { return len(rec.all()) == 1 }, 5*time.Second, time.Millisecond)
	cancel()
	<-done
	assert.Equal(t, []string{"firing:new"}, rec.transitions())
	assert.Equal(t, "k-new", rec.all()[0].Key)

	ds, err := st.LoadDeliveries(ctx)
	require.NoError(t, err)
	require.Len(t, ds, 1, "the old one is deleted; the new one, never reported done, is kept")
	assert.Equal(t, "k-new", ds[0].Key)
}

// A notification no notifier ever reports done on is given up once it is
// RedeliverWithin old during a run too (not only at start-up): deleted from
// the store and counted; and a failed save of the outbox keeps its
// changes for the next Flush.
func TestOutboxPrunedAndRetried(t *testing.T) {
	ctx := context.Background()
	st, err := NewSQLiteStore(ctx, openDB(t, filepath.Join(t.TempDir(), "infrawatch.db")))
	require.NoError(t, err)
	require.NoError(t, st.SaveDeliveries(ctx, []Delivery{{Key: "k-1", At: at(-10 * time.Minute),
		Notification: Notification{Transition: TransitionFiring, Alert: Alert{ID: "a-1", DeviceID: "d1", State: StateFiring},
			Webhooks: []string{"http://127.0.0.1:1/hook"}, Key: "k-1"}}}, nil))
	failing := &failingDeliveries{Store: st}
	e, err := NewEngine(ctx, Options{Lookup: newRegistry().lookup, Store: failing, Notifiers: []Notifier{&recorder{}},
		Now: func() time.Time { return t0 }, Registerer: prometheus.NewRegistry(), RedeliverWithin: time.Hour})
	require.NoError(t, err)

	e.pruneOutbox(t0.Add(30 * time.Minute)) // 40 min old: kept
	e.pruneOutbox(t0.Add(2 * time.Hour))    // given up
	assert.Equal(t, 1.0, testutil.ToFloat64(e.m.outboxDropped))

	failing.fail = true
	require.Error(t, e.Flush(ctx))
	ds, err := st.LoadDeliveries(ctx)
	require.NoError(t, err)
	require.Len(t, ds, 1, "the failed save deleted nothing")

	failing.fail = false
	require.NoError(t, e.Flush(ctx))
	ds, err = st.LoadDeliveries(ctx)
	require.NoError(t, err)
	assert.Empty(t, ds, "the deletion was kept for the next Flush")
}

// failingDeliveries is a Store whose SaveDeliveries fails while fail is set.
type failingDeliveries struct {
	Store
	fail bool
}

func (s *failingDeliveries) SaveDeliveries(ctx context.Context, save []Delivery, del []string) error {
	if s.fail {
		return errors.New("disk full")
	}
	return s.Store.SaveDeliveries(ctx, save, del)
}
