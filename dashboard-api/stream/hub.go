package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Defaults filled in by NewHub.
const (
	DefaultReplaySize      = 65536
	DefaultQueueSize       = 1024
	DefaultMaxLag          = 5 * time.Second
	DefaultWriteWait       = 10 * time.Second
	DefaultPongWait        = 60 * time.Second
	DefaultMaxMessageBytes = 64 << 10
	DefaultCloseGrace      = 2 * time.Second
)

// Close codes sent to clients.
const (
	CloseTooSlow = 4000 // the client stayed behind
)

// Reasons a client is dropped, the label of the dropped counter.
const (
	DropQueueFull   = "queue_full"   // queue still full after coalescing
	DropLagging     = "lagging"      // behind for longer than MaxLag
	DropWriteFailed = "write_failed" // a write failed or timed out
	DropRevoked     = "revoked"      // the token is no longer valid
)

// Options configures a Hub. Lookup is required; zero fields get defaults.
type Options struct {
	// Lookup finds a device's registry entry (devices.Registry.Lookup), for
	// the domain, site and location that subscriptions filter on.
	Lookup func(id string) (*telemetry.Device, bool)
	// ReplaySize is how many recent events are kept for resumes; default
	// DefaultReplaySize.
	ReplaySize int
	// QueueSize bounds each client's queue; default DefaultQueueSize. When it
	// is full, the client's queued readings of a device are coalesced to the
	// newest; if it is still full the client is dropped.
	QueueSize int
	// MaxLag is how long a client may stay behind (from the first
	// coalescing until its queue next drains) before it is dropped; default
	// DefaultMaxLag.
	MaxLag time.Duration
	// WriteWait bounds one write to a client; default DefaultWriteWait.
	WriteWait time.Duration
	// PongWait is how long a connection may stay silent (no message, no
	// pong); pings go out every PongWait*9/10. Default DefaultPongWait.
	PongWait time.Duration
	// MaxMessageBytes caps a client's message; default
	// DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// CloseGrace is how long the hub waits for a client to answer a close
	// before it drops the connection; default DefaultCloseGrace.
	CloseGrace time.Duration
	// FirstSeq is the seq before the first event. Zero means the start time
	// in Unix microseconds, so that seqs of a restarted server exceed those
	// of the previous process and a client resuming with an old seq gets a
	// snapshot instead of a replay of unrelated events.
	FirstSeq uint64
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Registerer receives the stream metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger receives connection events; default slog.Default().
	Logger *slog.Logger
}

// Validate reports every configuration error, naming the field.
func (o *Options) Validate() error {
	var errs []error
	if o.Lookup == nil {
		errs = append(errs, errors.New("Lookup: required"))
	}
	neg := func(name string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %d", name, v))
		}
	}
	neg("ReplaySize", int64(o.ReplaySize))
	neg("QueueSize", int64(o.QueueSize))
	neg("MaxLag", int64(o.MaxLag))
	neg("WriteWait", int64(o.WriteWait))
	neg("PongWait", int64(o.PongWait))
	neg("MaxMessageBytes", o.MaxMessageBytes)
	neg("CloseGrace", int64(o.CloseGrace))
	return errors.Join(errs...)
}

func (o *Options) setDefaults() {
	if o.ReplaySize == 0 {
		o.ReplaySize = DefaultReplaySize
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.MaxLag == 0 {
		o.MaxLag = DefaultMaxLag
	}
	if o.WriteWait == 0 {
		o.WriteWait = DefaultWriteWait
	}
	if o.PongWait == 0 {
		o.PongWait = DefaultPongWait
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.CloseGrace == 0 {
		o.CloseGrace = DefaultCloseGrace
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.FirstSeq == 0 {
		o.FirstSeq = uint64(o.Now().UnixMicro())
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// metrics are the hub's counters.
type metrics struct {
	clients   prometheus.Gauge
	sent      *prometheus.CounterVec
	coalesced prometheus.Counter
	dropped   *prometheus.CounterVec
	// resolved children: the fan-out must not hash labels per message
	sentBy map[string]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infrawatch_stream_clients",
			Help: "Websocket stream clients connected.",
		}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_stream_messages_sent_total",
			Help: "Messages sent to stream clients, by type.",
		}, []string{"type"}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infrawatch_stream_readings_coalesced_total",
			Help: "Readings not sent to a client that fell behind because a newer reading of the device replaced them.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_stream_clients_dropped_total",
			Help: "Stream clients disconnected by the server, by reason.",
		}, []string{"reason"}),
		sentBy: map[string]prometheus.Counter{},
	}
	for _, t := range []string{msgSnapshot, EventReading, EventStatus, EventAlert, msgError} {
		m.sentBy[t] = m.sent.WithLabelValues(t)
	}
	for _, r := range []string{DropQueueFull, DropLagging, DropWriteFailed, DropRevoked} {
		m.dropped.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.clients, m.sent, m.coalesced, m.dropped} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register stream metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Hub numbers events and fans them out to the connected clients. It
// implements telemetry.Consumer. All its methods are safe for concurrent use;
// Consume, Status and Alert never block on a client.
type Hub struct {
	o   Options
	m   *metrics
	log *slog.Logger

	// mu orders events: seq, the replay ring and every client's queue change
	// together under it, so a client's queue is always in seq order and a
	// subscription change sits at an exact point of the sequence. Nothing
	// under it blocks: client queues are bounded slices behind their own
	// short mutex.
	mu      sync.Mutex
	seq     uint64
	ring    []*event // ring[seq % len(ring)]
	ringLen int
	clients []*client
	closed  bool

	serving sync.WaitGroup // one per Serve call that registered
}

// NewHub returns a hub with no clients. It starts no goroutine: each
// connection served runs its own two, and Close ends them.
func NewHub(o Options) (*Hub, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("stream hub options: %w", err)
	}
	o.setDefaults()
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	return &Hub{o: o, m: m, log: o.Logger, seq: o.FirstSeq, ring: make([]*event, o.ReplaySize)}, nil
}

// Seq returns the seq of the newest event.
func (h *Hub) Seq() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// Clients returns the number of clients receiving events.
func (h *Hub) Clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// Consume publishes readings (telemetry.Consumer). It copies what it keeps
// and never blocks on a client. Wire the hub after the live state in
// ingest's consumers, so that a snapshot taken at seq S reflects every
// reading up to S.
func (h *Hub) Consume(readings []telemetry.Reading) {
	if len(readings) == 0 {
		return
	}
	evs := make([]*event, len(readings))
	// One backing array for all the copied values of the batch.
	n := 0
	for i := range readings {
		n += len(readings[i].Values)
	}
	vals := make([]telemetry.Value, 0, n)
	var (
		lastID  string
		lastDev *telemetry.Device
	)
	for i := range readings {
		rd := &readings[i]
		if i == 0 || rd.DeviceID != lastID {
			lastID = rd.DeviceID
			lastDev, _ = h.o.Lookup(rd.DeviceID)
		}
		// Copying the Values is what the Consumer contract asks; the strings
		// in them are immutable and safe to share.
		start := len(vals)
		vals = append(vals, rd.Values...)
		e := &event{kind: kindReading, deviceID: rd.DeviceID, time: rd.Time,
			values: vals[start:len(vals):len(vals)]}
		e.place(lastDev)
		evs[i] = e
	}
	h.publish(evs...)
}

// Status publishes a device's status change. Wire it to the live state's
// OnStatus (through cmd's fan-out); it never blocks.
func (h *Hub) Status(ev telemetry.StatusEvent) {
	e := &event{kind: kindStatus, deviceID: ev.DeviceID, status: ev.Status, previous: ev.Previous, time: ev.Time}
	d, _ := h.o.Lookup(ev.DeviceID)
	e.place(d)
	h.publish(e)
}

// Alert publishes an alert transition; it never blocks. ev.Alert is
// marshaled now; an alert that cannot be marshaled is logged and dropped.
func (h *Hub) Alert(ev AlertEvent) {
	raw, err := json.Marshal(ev.Alert)
	if err != nil {
		h.log.Error("stream: marshal alert", "device_id", ev.DeviceID, "transition", ev.Transition, "err", err)
		return
	}
	e := &event{kind: kindAlert, deviceID: ev.DeviceID, domain: ev.Domain, site: ev.Site,
		transition: ev.Transition, alertJSON: raw}
	if ev.DeviceID != "" {
		d, _ := h.o.Lookup(ev.DeviceID)
		e.place(d)
	}
	h.publish(e)
}

// publish numbers the events, keeps them for replay and offers them to every
// client, in one critical section so that every queue sees them in order.
func (h *Hub) publish(evs ...*event) {
	now := h.o.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	size := uint64(len(h.ring))
	for _, e := range evs {
		h.seq++
		e.seq = h.seq
		h.ring[h.seq%size] = e
		if h.ringLen < len(h.ring) {
			h.ringLen++
		}
		// Backwards, so that dropping (swap with the last) skips no one.
		for i := len(h.clients) - 1; i >= 0; i-- {
			c := h.clients[i]
			if reason := c.offer(e, now); reason != "" {
				h.dropLocked(c, reason)
			}
		}
	}
}

// dropLocked disconnects a client with 4000 "too slow" (or 1008 when its
// token was revoked). Called with h.mu held.
func (h *Hub) dropLocked(c *client, reason string) {
	cr := closeTooSlow
	if reason == DropRevoked {
		cr = closeRevoked
	}
	if !c.close(cr) {
		return
	}
	h.removeLocked(c)
	h.m.dropped.WithLabelValues(reason).Inc()
	h.log.Info("stream client dropped", "client", c.name, "reason", reason)
}

func (h *Hub) removeLocked(c *client) {
	i := c.idx
	if i < 0 || i >= len(h.clients) || h.clients[i] != c {
		return
	}
	last := len(h.clients) - 1
	h.clients[i] = h.clients[last]
	h.clients[i].idx = i
	h.clients[last] = nil
	h.clients = h.clients[:last]
	c.idx = -1
}

func (h *Hub) drop(c *client, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(c, reason)
}

func (h *Hub) remove(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removeLocked(c)
}

// add registers a new connection; false once the hub is closed.
func (h *Hub) add(c *client) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	c.idx = len(h.clients)
	h.clients = append(h.clients, c)
	h.serving.Add(1)
	return true
}

// subscribe sets a client's filter and queues a snapshot at the current seq:
// the snapshot is built later, by the writer, so it reflects at least every
// event up to that seq, and every later matching event is queued behind it.
// An event newer than the seq may be reflected in the snapshot and arrive
// as well; applying it again is harmless (latest value, same status).
func (h *Hub) subscribe(c *client, m *matcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.subscribe(m, h.seq, nil)
}

// resume replays the events after seq `after` that match m, if the ring
// still holds all of them; otherwise it falls back to a snapshot. It reports
// whether it replayed.
func (h *Hub) resume(c *client, m *matcher, after uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	oldest := h.seq + 1 - uint64(h.ringLen) // seq of the oldest event held
	if after > h.seq || after+1 < oldest {
		c.subscribe(m, h.seq, nil)
		return false
	}
	replay := []*event{} // non-nil: a replay, even of nothing
	size := uint64(len(h.ring))
	for s := after + 1; s <= h.seq; s++ {
		if e := h.ring[s%size]; m.match(e) {
			replay = append(replay, e)
		}
	}
	c.subscribe(m, 0, replay)
	return true
}

// Close disconnects every client with 1001 "going away", stops accepting
// connections and events, and waits for the connections' goroutines to end
// (at most WriteWait plus CloseGrace for a stuck client).
func (h *Hub) Close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		for _, c := range h.clients {
			c.close(closeGoingAway)
			c.idx = -1
		}
		h.clients = nil
	}
	h.mu.Unlock()
	h.serving.Wait()
}

// Run closes the hub when ctx ends; the hub needs no goroutine of its own,
// Run only gives cmd the usual way to stop a component.
func (h *Hub) Run(ctx context.Context) error {
	<-ctx.Done()
	h.Close()
	return nil
}
