package alerts

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
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

const secret = "s3cret"

type received struct {
	body []byte
	sig  string
}

func newWebhook(t *testing.T, o WebhookOptions) *WebhookNotifier {
	t.Helper()
	o.Secret = secret
	if o.Retry.Base == 0 {
		o.Retry = RetryPolicy{Attempts: 5, Base: 5 * time.Millisecond, Max: 20 * time.Millisecond}
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	w, err := NewWebhookNotifier(o)
	require.NoError(t, err)
	t.Cleanup(w.Close)
	return w
}

func TestWebhookRetriesUntilDeliveredWithValidSignature(t *testing.T) {
	var calls atomic.Int32
	got := make(chan received, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if calls.Add(1) <= 3 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		got <- received{body: b, sig: r.Header.Get("X-Infrawatch-Signature")}
	}))
	defer srv.Close()

	reg := prometheus.NewRegistry()
	wh := newWebhook(t, WebhookOptions{Registerer: reg})
	// Through the engine, so the payload is what crews really get.
	f := newFixture(t, nil)
	f.e.o.Notifiers = []Notifier{wh}
	f.rule(t, Rule{Name: "hot", Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, Notify: Notify{Webhooks: []string{srv.URL + "/hook"}}})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})

	var r received
	select {
	case r = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("webhook never delivered")
	}
	assert.Equal(t, int32(4), calls.Load())
	assert.True(t, hmac.Equal([]byte(Sign(secret, r.body)), []byte(r.sig)), "signature %s", r.sig)
	var p struct {
		Transition string `json:"transition"`
		Rule       string `json:"rule"`
		Alert      Alert  `json:"alert"`
	}
	require.NoError(t, json.Unmarshal(r.body, &p))
	assert.Equal(t, "firing", p.Transition)
	assert.Equal(t, "hot", p.Rule)
	assert.Equal(t, "d1", p.Alert.DeviceID)
	assert.Equal(t, StateFiring, p.Alert.State)
	require.Eventually(t, func() bool { return testutil.ToFloat64(wh.result.WithLabelValues("sent")) == 1 },
		5*time.Second, time.Millisecond)
	assert.Equal(t, 3.0, testutil.ToFloat64(wh.result.WithLabelValues("retried")))
}

func TestWebhookClientErrorIsNotRetried(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no", http.StatusBadRequest)
	}))
	defer srv.Close()
	wh := newWebhook(t, WebhookOptions{})
	wh.Notify(Notification{Transition: "firing", Webhooks: []string{srv.URL}})
	require.Eventually(t, func() bool { return testutil.ToFloat64(wh.result.WithLabelValues("failed")) == 1 },
		5*time.Second, 5*time.Millisecond)
	assert.Equal(t, int32(1), calls.Load())
}

func TestHangingReceiverDoesNotDelayOthers(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	var once sync.Once
	defer hang.Close()
	defer once.Do(func() { close(release) })
	got := make(chan string, 10)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p payload
		_ = json.NewDecoder(r.Body).Decode(&p)
		got <- p.Alert.DeviceID
	}))
	defer ok.Close()

	wh := newWebhook(t, WebhookOptions{Timeout: time.Minute})
	// The hanging URL is first in the rule and first in time.
	for i := range 3 {
		wh.Notify(Notification{Transition: "firing", Alert: Alert{DeviceID: "hung" + string(rune('0'+i))}, Webhooks: []string{hang.URL}})
	}
	start := time.Now()
	wh.Notify(Notification{Transition: "firing", Alert: Alert{DeviceID: "d9"}, Webhooks: []string{hang.URL, ok.URL}})
	select {
	case id := <-got:
		assert.Equal(t, "d9", id)
		assert.Less(t, time.Since(start), 2*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("the healthy receiver waited for the hanging one")
	}
	once.Do(func() { close(release) })
}

func TestWebhookQueueFullDrops(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	wh := newWebhook(t, WebhookOptions{QueueSize: 2, Timeout: time.Minute})
	start := time.Now()
	for range 10 {
		wh.Notify(Notification{Transition: "firing", Webhooks: []string{srv.URL}})
	}
	assert.Less(t, time.Since(start), time.Second, "Notify never blocks")
	require.Eventually(t, func() bool { return testutil.ToFloat64(wh.result.WithLabelValues("dropped")) >= 7 },
		5*time.Second, 5*time.Millisecond)
}

func TestWebhookOptionsValidate(t *testing.T) {
	_, err := NewWebhookNotifier(WebhookOptions{QueueSize: -1})
	var ve *ValidationError
	require.True(t, errors.As(err, &ve))
	assert.Contains(t, ve.Fields, "secret")
	assert.Contains(t, ve.Fields, "queue_size")
}

// publisher records MQTT publications, failing the first fail calls.
type publisher struct {
	mu    sync.Mutex
	fail  int
	calls int
	msgs  []string
	qos   []byte
}

func (p *publisher) Publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.calls <= p.fail {
		return errors.New("not connected")
	}
	p.msgs = append(p.msgs, topic)
	p.qos = append(p.qos, qos)
	return nil
}

func (p *publisher) topics() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.msgs...)
}

func TestMQTTNotifier(t *testing.T) {
	pub := &publisher{fail: 2}
	m, err := NewMQTTNotifier(MQTTOptions{Publisher: pub, Registerer: prometheus.NewRegistry(),
		Retry: RetryPolicy{Attempts: 5, Base: time.Millisecond, Max: 5 * time.Millisecond}})
	require.NoError(t, err)
	defer m.Close()
	m.Notify(Notification{Transition: "firing", Alert: Alert{DeviceID: "d1", Site: "north"}, MQTT: false})
	m.Notify(Notification{Transition: "firing", Alert: Alert{DeviceID: "d1", Site: "north"}, MQTT: true})
	m.Notify(Notification{Transition: "firing", Alert: Alert{DeviceID: "d2", Site: "a/+#"}, MQTT: true})
	require.Eventually(t, func() bool { return len(pub.topics()) == 2 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, []string{"alerts/north/d1", "alerts/a___/d2"}, pub.topics())
	assert.Equal(t, []byte{1, 1}, pub.qos)
}

func TestRetryBackoff(t *testing.T) {
	p := RetryPolicy{Attempts: 6, Base: time.Second, Max: 5 * time.Second}
	var got []time.Duration
	for i := 1; i <= 5; i++ {
		got = append(got, p.backoff(i))
	}
	assert.Equal(t, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}, got)
}
