package alerts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Notification is one alert transition handed to the notifiers.
type Notification struct {
	Transition string // firing, acknowledged, resolved, renotify
	Alert      Alert
	RuleName   string
	Webhooks   []string // the rule's webhook URLs
	MQTT       bool     // the rule asks for an MQTT message
	// Affected is, for a gateway's offline or absence alert, how many
	// devices behind the gateway are folded into it.
	Affected int
	// Key names this notification across retries and restarts: the
	// X-Infrawatch-Delivery header and the payload's delivery_id, by which
	// receivers drop the duplicates that at-least-once delivery allows.
	Key string
	// Done, when set, is called once per destination (a webhook URL, or
	// DestMQTT) when the notifier has finished with it: delivered, or given
	// up for good (rejected, retries exhausted, queue full). It is not
	// called for what a Close cut short: the engine keeps that in its
	// Store and hands it over again at its next start (see notify_outbox.go).
	Done func(dest string) `json:"-"`
}

// DestMQTT is the destination MQTTNotifier reports to Notification.Done;
// webhook destinations are their URLs.
const DestMQTT = "mqtt"

func (n *Notification) done(dest string) {
	if n.Done != nil {
		n.Done(dest)
	}
}

// Notifier delivers notifications. Notify is called by the engine while it
// evaluates: it must not block (queue or drop, and count drops).
type Notifier interface {
	Notify(n Notification)
}

// payload is the JSON body of webhooks and MQTT messages.
type payload struct {
	Transition      string `json:"transition"`
	Rule            string `json:"rule"`
	Alert           Alert  `json:"alert"`
	AffectedDevices int    `json:"affected_devices,omitempty"`
	// Delivery is the same on every retry and after a restart.
	Delivery string `json:"delivery_id"`
}

func encodePayload(n Notification) ([]byte, error) {
	return json.Marshal(payload{Transition: n.Transition, Rule: n.RuleName, Alert: n.Alert,
		AffectedDevices: n.Affected, Delivery: deliveryID(n)})
}

// permanent marks an error that retrying will not fix (a 4xx answer).
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// RetryPolicy bounds redelivery: exponential backoff from Base, doubled per
// attempt up to Max, at most Attempts tries in all.
type RetryPolicy struct {
	Attempts int           // default 5
	Base     time.Duration // default 1s
	Max      time.Duration // default 1m
}

func (p *RetryPolicy) fill() {
	if p.Attempts <= 0 {
		p.Attempts = 5
	}
	if p.Base <= 0 {
		p.Base = time.Second
	}
	if p.Max <= 0 {
		p.Max = time.Minute
	}
}

func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.Base
	for i := 1; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// queue is one stage of the notification pipeline: a bounded queue drained
// by one goroutine that sends with retries. A slow or hanging destination
// holds up only its own queue.
type queue struct {
	ch     chan Notification
	send   func(ctx context.Context, n Notification) error
	retry  RetryPolicy
	result *prometheus.CounterVec
	log    *slog.Logger
	dest   string
}

func (q *queue) offer(n Notification) bool {
	select {
	case q.ch <- n:
		return true
	default:
		q.result.WithLabelValues("dropped").Inc()
		n.done(q.dest)
		return false
	}
}

func (q *queue) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-q.ch:
			q.deliver(ctx, n)
		}
	}
}

func (q *queue) deliver(ctx context.Context, n Notification) {
	for attempt := 1; ; attempt++ {
		err := q.send(ctx, n)
		if err == nil {
			q.result.WithLabelValues("sent").Inc()
			n.done(q.dest)
			return
		}
		var p permanent
		if errors.As(err, &p) || attempt >= q.retry.Attempts || ctx.Err() != nil {
			q.result.WithLabelValues("failed").Inc()
			q.log.Warn("alert notification failed", "dest", q.dest, "alert_id", n.Alert.ID,
				"transition", n.Transition, "attempts", attempt, "err", err)
			if ctx.Err() == nil {
				n.done(q.dest) // given up; a shutdown's cut is sent again at the next start
			}
			return
		}
		q.result.WithLabelValues("retried").Inc()
		t := time.NewTimer(q.retry.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			q.result.WithLabelValues("failed").Inc()
			return
		case <-t.C:
		}
	}
}

// WebhookOptions configures a WebhookNotifier.
type WebhookOptions struct {
	// Secret keys the X-Infrawatch-Signature HMAC; required.
	Secret string
	// Timeout bounds one POST (default 10s).
	Timeout time.Duration
	Retry   RetryPolicy
	// QueueSize bounds each URL's queue (default 256); beyond it,
	// notifications are dropped and counted.
	QueueSize int
	// MaxURLs bounds how many URLs get a queue (default 1000).
	MaxURLs int
	// Client sends the requests (default: a client with Timeout).
	Client     *http.Client
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Validate names each bad option.
func (o WebhookOptions) Validate() error {
	errs := map[string]string{}
	if o.Secret == "" {
		errs["secret"] = "required: receivers verify the HMAC signature with it"
	}
	for k, v := range map[string]int{"queue_size": o.QueueSize, "max_urls": o.MaxURLs} {
		if v < 0 {
			errs[k] = "must not be negative"
		}
	}
	if o.Timeout < 0 {
		errs["timeout"] = "must not be negative"
	}
	if len(errs) > 0 {
		return &ValidationError{Fields: errs}
	}
	return nil
}

// WebhookNotifier POSTs JSON to each URL of the rule, signed with
// X-Infrawatch-Signature: sha256=<hex HMAC-SHA256 of the body>. Each URL has
// its own queue and worker, so a hanging receiver delays nobody else.
type WebhookNotifier struct {
	o      WebhookOptions
	result *prometheus.CounterVec
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	queues map[string]*queue
	closed bool
}

// NewWebhookNotifier checks o, fills defaults and starts no goroutine until
// a URL is first used. Close stops its workers.
func NewWebhookNotifier(o WebhookOptions) (*WebhookNotifier, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("webhook notifier: %w", err)
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.QueueSize == 0 {
		o.QueueSize = 256
	}
	if o.MaxURLs == 0 {
		o.MaxURLs = 1000
	}
	o.Retry.fill()
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	res, err := registerCounterVec(o.Registerer, prometheus.CounterOpts{
		Name: "infrawatch_alerts_webhook_notifications_total",
		Help: "Webhook deliveries by result: sent, retried, failed, dropped (queue full).",
	}, "result")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &WebhookNotifier{o: o, result: res, ctx: ctx, cancel: cancel, queues: map[string]*queue{}}, nil
}

// Notify queues n for each of its webhook URLs; it never blocks.
func (w *WebhookNotifier) Notify(n Notification) {
	for _, u := range n.Webhooks {
		q, full := w.queueFor(u)
		switch {
		case q != nil:
			q.offer(n)
		case full:
			n.done(u)
		}
	}
}

// queueFor returns u's queue, or nil: closed, or full when MaxURLs is
// reached (dropped and counted).
func (w *WebhookNotifier) queueFor(u string) (q *queue, full bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, false
	}
	if q, ok := w.queues[u]; ok {
		return q, false
	}
	if len(w.queues) >= w.o.MaxURLs {
		w.result.WithLabelValues("dropped").Inc()
		return nil, true
	}
	q = &queue{
		ch:     make(chan Notification, w.o.QueueSize),
		retry:  w.o.Retry,
		result: w.result,
		log:    w.o.Logger,
		dest:   u,
	}
	q.send = func(ctx context.Context, n Notification) error { return w.post(ctx, u, n) }
	w.queues[u] = q
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		q.run(w.ctx)
	}()
	return q, false
}

// Sign returns the X-Infrawatch-Signature value for body: receivers compute
// the same and compare with hmac.Equal.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func (w *WebhookNotifier) post(ctx context.Context, u string, n Notification) error {
	body, err := encodePayload(n)
	if err != nil {
		return permanent{fmt.Errorf("encode webhook body: %w", err)}
	}
	ctx, cancel := context.WithTimeout(ctx, w.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return permanent{fmt.Errorf("build webhook request to %s: %w", u, err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "infrawatch-alerts")
	req.Header.Set("X-Infrawatch-Signature", Sign(w.o.Secret, body))
	req.Header.Set("X-Infrawatch-Event", n.Transition)
	// The same delivery id on every retry lets receivers drop duplicates.
	req.Header.Set("X-Infrawatch-Delivery", deliveryID(n))
	resp, err := w.o.Client.Do(req)
	if err != nil {
		return fmt.Errorf("post webhook to %s: %w", u, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests,
		resp.StatusCode >= 500:
		return fmt.Errorf("post webhook to %s: status %d", u, resp.StatusCode)
	default:
		return permanent{fmt.Errorf("post webhook to %s: status %d", u, resp.StatusCode)}
	}
}

func deliveryID(n Notification) string {
	if n.Key != "" {
		return n.Key
	}
	return n.Alert.ID + "-" + n.Transition + "-" + fmt.Sprint(n.Alert.LastNotifiedAt.UnixMilli())
}

// Close stops the workers. Queued notifications and retries are cut short
// without Done: the engine sends them again at its next start.
func (w *WebhookNotifier) Close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cancel()
	w.wg.Wait()
	w.o.Client.CloseIdleConnections()
}

// Publisher is the one MQTT call MQTTNotifier needs; the MQTT client that
// cmd wires in (paho, or the embedded broker's inline client) implements it
// and waits for the QoS 1 acknowledgement within ctx.
type Publisher interface {
	Publish(ctx context.Context, topic string, qos byte, payload []byte) error
}

// MQTTOptions configures an MQTTNotifier.
type MQTTOptions struct {
	Publisher  Publisher     // required
	Timeout    time.Duration // one publish (default 10s)
	Retry      RetryPolicy
	QueueSize  int // default 1024
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// MQTTNotifier publishes each notification of a rule with MQTT on to
// alerts/<site>/<device_id> with QoS 1, for crews' field apps.
type MQTTNotifier struct {
	o      MQTTOptions
	q      *queue
	cancel context.CancelFunc
	done   chan struct{}
}

// NewMQTTNotifier checks o, fills defaults and starts its worker; Close
// stops it.
func NewMQTTNotifier(o MQTTOptions) (*MQTTNotifier, error) {
	if o.Publisher == nil {
		return nil, fmt.Errorf("mqtt notifier: %w", &ValidationError{Fields: map[string]string{"publisher": "required"}})
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	o.Retry.fill()
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	res, err := registerCounterVec(o.Registerer, prometheus.CounterOpts{
		Name: "infrawatch_alerts_mqtt_notifications_total",
		Help: "MQTT alert publications by result: sent, retried, failed, dropped (queue full).",
	}, "result")
	if err != nil {
		return nil, err
	}
	m := &MQTTNotifier{o: o, done: make(chan struct{})}
	m.q = &queue{ch: make(chan Notification, o.QueueSize), retry: o.Retry, result: res, log: o.Logger, dest: DestMQTT}
	m.q.send = m.publish
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer close(m.done)
		m.q.run(ctx)
	}()
	return m, nil
}

// AlertTopic is the MQTT topic of an alert: alerts/<site>/<device_id>, with
// characters that would split or widen a topic replaced.
func AlertTopic(site, deviceID string) string {
	return "alerts/" + topicSafe(site) + "/" + topicSafe(deviceID)
}

func topicSafe(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '/', '+', '#', 0:
			return '_'
		}
		return r
	}, s)
}

// Notify queues n if its rule asks for MQTT; it never blocks.
func (m *MQTTNotifier) Notify(n Notification) {
	if n.MQTT {
		m.q.offer(n)
	}
}

func (m *MQTTNotifier) publish(ctx context.Context, n Notification) error {
	body, err := encodePayload(n)
	if err != nil {
		return permanent{fmt.Errorf("encode mqtt alert: %w", err)}
	}
	ctx, cancel := context.WithTimeout(ctx, m.o.Timeout)
	defer cancel()
	topic := AlertTopic(n.Alert.Site, n.Alert.DeviceID)
	if err := m.o.Publisher.Publish(ctx, topic, 1, body); err != nil {
		return fmt.Errorf("publish alert to %s: %w", topic, err)
	}
	return nil
}

// Close stops the worker. Queued notifications and retries are cut short
// without Done: the engine sends them again at its next start.
func (m *MQTTNotifier) Close() {
	m.cancel()
	<-m.done
}

func registerCounterVec(r prometheus.Registerer, o prometheus.CounterOpts, labels ...string) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(o, labels)
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("register %s: %w", o.Name, err)
	}
	return c, nil
}

func registerCounter(r prometheus.Registerer, o prometheus.CounterOpts) (prometheus.Counter, error) {
	c := prometheus.NewCounter(o)
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(prometheus.Counter); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("register %s: %w", o.Name, err)
	}
	return c, nil
}

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
