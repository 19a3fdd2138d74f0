package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Defaults filled in by NewHub.
const (
	DefaultReplaySize      = 65536
	DefaultQueueSize       = 512
	DefaultMaxLag          = 5 * time.Second
	DefaultWriteWait       = 10 * time.Second
	DefaultPongWait        = 60 * time.Second
	DefaultMaxMessageBytes = 64 << 10
	DefaultCloseGrace      = 2 * time.Second
	DefaultFlushInterval   = 50 * time.Millisecond
	DefaultIntakeSize      = 65536
	DefaultMaxSendRate     = 100_000
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
	// the domain, site and location that subscriptions filter on. The hub
	// keeps the returned entry in its events (the replay ring included), so
	// an entry must never change once returned: a change returns a new one,
	// as the registry's copy-on-write records do. Readings are coalesced
	// by the entry's Slot, unique among the devices registered at a time
	// as the registry's are; an unregistered device's are not coalesced.
	Lookup func(id string) (*telemetry.Device, bool)
	// ReplaySize is how many recent events are kept for resumes; default
	// DefaultReplaySize.
	ReplaySize int
	// QueueSize bounds the events waiting for each client; default
	// DefaultQueueSize. Once more than CoalesceAbove wait, the client's
	// readings of a device are coalesced to the newest; if more than
	// QueueSize still wait, the client is dropped.
	QueueSize int
	// CoalesceAbove is how many events may wait for a client (or arrive for
	// it in one FlushInterval) before its readings are coalesced; default
	// QueueSize/2. Below it a client gets every event.
	CoalesceAbove int
	// FlushInterval paces the fan-out: events are handed to clients at most
	// once per interval, so that one write to a client carries an interval's
	// worth of events (one frame for a batch client). Default
	// DefaultFlushInterval.
	FlushInterval time.Duration
	// MaxSendRate bounds the events per second the hub hands to all its
	// clients together (an event sent to 100 clients counts 100 times; a
	// write counts as writeCost events more).
	// Over it, clients take turns: each flush serves every stride-th
	// client, and a client's turn carries the newest reading of each
	// device since its previous turn, so each client gets fewer, fresher
	// readings rather than the stream starving ingest of CPU, and the
	// writes are spread over the flushes instead of one burst. Once the
	// stride is windowSegs, flushes are spaced out too. Default
	// DefaultMaxSendRate.
	MaxSendRate int
	// IntakeSize bounds the events waiting for the fan-out. Consume never
	// waits: beyond the bound it drops readings and counts them. Default
	// DefaultIntakeSize.
	IntakeSize int
	// MaxLag is how long a client may stay behind (from the moment more
	// than CoalesceAbove events wait for it until its writer next takes its
	// queue) before it is dropped; default DefaultMaxLag.
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

	// manual (tests): no fan-out goroutine; the test calls flush.
	manual bool
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
	neg("CoalesceAbove", int64(o.CoalesceAbove))
	neg("FlushInterval", int64(o.FlushInterval))
	neg("IntakeSize", int64(o.IntakeSize))
	neg("MaxSendRate", int64(o.MaxSendRate))
	neg("MaxLag", int64(o.MaxLag))
	neg("WriteWait", int64(o.WriteWait))
	neg("PongWait", int64(o.PongWait))
	neg("MaxMessageBytes", o.MaxMessageBytes)
	neg("CloseGrace", int64(o.CloseGrace))
	if o.QueueSize > 0 && o.CoalesceAbove > o.QueueSize {
		errs = append(errs, fmt.Errorf("CoalesceAbove: must not exceed QueueSize (%d), got %d", o.QueueSize, o.CoalesceAbove))
	}
	return errors.Join(errs...)
}

func (o *Options) setDefaults() {
	if o.ReplaySize == 0 {
		o.ReplaySize = DefaultReplaySize
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.CoalesceAbove == 0 {
		o.CoalesceAbove = max(1, o.QueueSize/2)
	}
	o.CoalesceAbove = min(o.CoalesceAbove, o.QueueSize)
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.IntakeSize == 0 {
		o.IntakeSize = DefaultIntakeSize
	}
	if o.MaxSendRate == 0 {
		o.MaxSendRate = DefaultMaxSendRate
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
	clients       prometheus.Gauge
	sent          *prometheus.CounterVec
	writes        prometheus.Counter
	coalesced     prometheus.Counter
	dropped       *prometheus.CounterVec
	intakeDropped prometheus.Counter
	maxSendRate   prometheus.Gauge
	// resolved children: the fan-out must not hash labels per message
	sentBy   map[string]prometheus.Counter
	sentKind [kindAlert + 1]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, maxSendRate int) (*metrics, error) {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infrawatch_stream_clients",
			Help: "Websocket stream clients connected.",
		}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_stream_messages_sent_total",
			Help: "Messages sent to stream clients, by type; an event inside a batch message counts as its type.",
		}, []string{"type"}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infrawatch_stream_writes_total",
			Help: "Writes to stream clients' connections: each carries every message queued for the client since its last write.",
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infrawatch_stream_readings_coalesced_total",
			Help: "Readings not sent to a client because a newer reading of the device replaced them (counted per client).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_stream_clients_dropped_total",
			Help: "Stream clients disconnected by the server, by reason.",
		}, []string{"reason"}),
		intakeDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infrawatch_stream_intake_dropped_total",
			Help: "Events not streamed because the hub's intake was full (the fan-out fell behind); ingest never waits for the stream.",
		}),
		// The limit beside the rate it bounds: sent messages (plus writes)
		// near it mean clients are taking turns (see Options.MaxSendRate).
		maxSendRate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infrawatch_stream_max_send_rate",
			Help: "Events per second the stream hands to all its clients together at most (http.stream_max_send_rate); over it, clients take turns.",
		}),
		sentBy: map[string]prometheus.Counter{},
	}
	m.maxSendRate.Set(float64(maxSendRate))
	for _, t := range []string{msgSnapshot, EventReading, EventStatus, EventAlert, msgError} {
		m.sentBy[t] = m.sent.WithLabelValues(t)
	}
	for _, k := range []kind{kindReading, kindStatus, kindAlert} {
		m.sentKind[k] = m.sentBy[k.String()]
	}
	for _, r := range []string{DropQueueFull, DropLagging, DropWriteFailed, DropRevoked} {
		m.dropped.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.clients, m.sent, m.writes, m.coalesced, m.dropped, m.intakeDropped, m.maxSendRate} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register stream metrics: %w", err)
			}
		}
	}
	return m, nil
}

// intakeItem is what waits for the fan-out: an event to number and send, or
// a message for one client (an error answer), which must reach the client
// behind the events published before it.
type intakeItem struct {
	ev  *event
	to  *client
	ctl *control
}

// windowSegs is how many fan-out segments a group keeps, and so the most
// segments a client may go without a write while it is staggered (see
// Hub.stride).
const windowSegs = 128

// group is the clients with one subscription (matcher key): the fan-out
// matches, coalesces and frames their events once for all of them.
type group struct {
	m       *matcher
	clients []*client // c.gidx is the index
	scratch []*event

	// segs[s%windowSegs] is what segment s brought the group (nil:
	// nothing) when segAt holds s. A client that skipped segments gets
	// them, coalesced, in one window chunk.
	segs  [windowSegs]*chunk
	segAt [windowSegs]uint64
	// The window chunk built in this segment, for the clients that share
	// its start.
	winFrom, winTo uint64
	win            *chunk
}

// window returns the events of segments (from, to], coalesced: a client
// that waited for its turn gets the newest reading of each device (and
// every status and alert event); nil when there are none. The clients whose
// last segment was from share it.
func (g *group) window(from, to uint64, h *Hub) *chunk {
	if g.win != nil && g.winFrom == from && g.winTo == to {
		return g.win
	}
	var (
		evs    []*event
		before int // coalesced away within the segments already
	)
	for s := from + 1; s <= to; s++ {
		if i := s % windowSegs; g.segAt[i] == s && g.segs[i] != nil {
			evs = append(evs, g.segs[i].evs...)
			before += g.segs[i].coalesced
		}
	}
	if len(evs) == 0 {
		return nil
	}
	ch := &chunk{}
	ch.evs, ch.coalesced = coalesce(evs, &h.seen)
	ch.coalesced += before
	g.win, g.winFrom, g.winTo = ch, from, to
	return ch
}

// Hub numbers events and fans them out to the connected clients. It
// implements telemetry.Consumer. All its methods are safe for concurrent use.
//
// Consume, Status and Alert only append to a bounded intake (dropping and
// counting when it is full) and return: their cost does not depend on the
// clients. One fan-out goroutine, at most once per FlushInterval, places
// what arrived, keeps it for replay, and hands each subscription group one
// shared chunk that every client of the group whose turn it is queues by
// pointer (see MaxSendRate). Each client's writer sends everything queued
// since its last write in one write; an event is encoded once, by the
// first writer that sends it.
type Hub struct {
	o   Options
	m   *metrics
	log *slog.Logger

	// in guards the intake; held only to append or swap.
	in       sync.Mutex
	intake   []intakeItem
	assigned uint64 // the seq of the newest event in the intake
	inClosed bool
	wake     chan struct{} // cap 1: the intake is not empty

	// mu orders events: seq, the replay ring, groups and every client's
	// queue change together under it, so a client's queue is always in
	// seq order and a subscription change sits at an exact point of the
	// sequence. Only the fan-out goroutine and connection set-up take it;
	// nothing under it does I/O.
	mu      sync.Mutex
	seq     uint64
	ring    []*event // ring[seq % len(ring)]
	ringLen int
	clients []*client // c.idx is the index
	groups  map[string]*group
	closed  bool
	seen    devScratch   // coalesce scratch
	spare   []intakeItem // the intake's other buffer
	seg     []*event     // flush scratch
	// handedOut counts events queued for clients (once per client) since
	// the fan-out goroutine last looked, for MaxSendRate.
	handedOut int
	// segNo numbers the fan-out's segments (one per flush, more when a
	// client message splits one). stride is how many segments a client
	// waits between writes, chosen to keep within MaxSendRate; a client
	// writes in the segments where (segNo + its phase) % stride == 0, so
	// each segment writes to 1/stride of the clients instead of all of
	// them at once in a longer interval.
	segNo     uint64
	stride    uint64
	nextPhase uint64
	// The stride's control period: segments and events handed out.
	ctlSegs, ctlHanded int
	// lastFull is the last segment that had events; deferred counts the
	// clients whose turn the last segment put off (over its budget).
	lastFull uint64
	deferred int
	// tailSegs is how many empty segments follow lastFull (see
	// tailingLocked).
	tailSegs uint64

	lastSeq  atomic.Uint64 // = assigned, readable without the lock
	nclients atomic.Int64

	stop     chan struct{}
	loopDone chan struct{}
	serving  sync.WaitGroup // one per Serve call that registered
}

// NewHub returns a hub with no clients and starts its fan-out goroutine,
// which Close (or Run's end) stops.
func NewHub(o Options) (*Hub, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("stream hub options: %w", err)
	}
	o.setDefaults()
	m, err := newMetrics(o.Registerer, o.MaxSendRate)
	if err != nil {
		return nil, err
	}
	h := &Hub{o: o, m: m, log: o.Logger, seq: o.FirstSeq, ring: make([]*event, o.ReplaySize),
		groups: map[string]*group{}, wake: make(chan struct{}, 1), stride: 1,
		stop: make(chan struct{}), loopDone: make(chan struct{})}
	h.assigned = o.FirstSeq
	h.lastSeq.Store(o.FirstSeq)
	if o.manual {
		close(h.loopDone)
	} else {
		go h.loop()
	}
	return h, nil
}

// Seq returns the seq of the newest event published (it may still be on
// its way to the clients).
func (h *Hub) Seq() uint64 { return h.lastSeq.Load() }

// Clients returns the number of clients receiving events.
func (h *Hub) Clients() int { return int(h.nclients.Load()) }

// Consume publishes readings (telemetry.Consumer). It copies what it keeps,
// appends it to the intake and returns: it never waits for the fan-out or a
// client, and its cost does not depend on how many clients are connected.
// Wire the hub after the live state in ingest's consumers, so that a
// snapshot taken at seq S reflects every reading up to S.
func (h *Hub) Consume(readings []telemetry.Reading) {
	switch len(readings) {
	case 0:
		return
	case 1:
		// What ingest hands over for most MQTT messages: the event and
		// its values in one allocation.
		rd := &readings[0]
		e, vals := newReading(len(rd.Values))
		copy(vals, rd.Values)
		e.setReading(rd.DeviceID, rd.Time, vals)
		e.reg = registered(rd)
		h.enqueue(intakeItem{ev: e})
		return
	}
	evs := make([]event, len(readings))
	// One backing array for all the copied values of the batch.
	n := 0
	for i := range readings {
		n += len(readings[i].Values)
	}
	vals := make([]telemetry.Value, 0, n)
	for i := range readings {
		rd := &readings[i]
		// Copying the Values is what the Consumer contract asks; the strings
		// in them are immutable and safe to share.
		start := len(vals)
		vals = append(vals, rd.Values...)
		evs[i].setReading(rd.DeviceID, rd.Time, vals[start:len(vals):len(vals)])
		evs[i].reg = registered(rd)
	}
	h.enqueueEvents(evs)
}

// registered is rd's registry entry as ingest found it, which spares the
// intake a lookup; nil: the intake looks the device up.
func registered(rd *telemetry.Reading) *telemetry.Device {
	if d := rd.Device; d != nil && d.ID == rd.DeviceID {
		return d
	}
	return nil
}

// enqueue appends one item to the intake, if its bound allows, and wakes
// the fan-out.
func (h *Hub) enqueue(it intakeItem) {
	h.in.Lock()
	n, ok := h.roomLocked(1)
	if !ok {
		h.in.Unlock()
		return
	}
	if n == 1 {
		// Numbered here, in intake order: Seq is current as soon as
		// Consume returns, and dropped events leave no gap.
		if it.ev != nil {
			h.assigned++
			it.ev.seq = h.assigned
		}
		h.intake = append(h.intake, it)
	}
	h.unlockAdmitted(n, 1)
}

// enqueueEvents is enqueue of each of evs under one lock, without a slice
// of items to build (a batch's would cost 24 bytes a reading).
func (h *Hub) enqueueEvents(evs []event) {
	h.in.Lock()
	n, ok := h.roomLocked(len(evs))
	if !ok {
		h.in.Unlock()
		return
	}
	for i := range evs[:n] {
		h.assigned++
		evs[i].seq = h.assigned
		h.intake = append(h.intake, intakeItem{ev: &evs[i]})
	}
	h.unlockAdmitted(n, len(evs))
}

// roomLocked returns how many of want items the intake takes; false once
// the hub is closed. Called with h.in held.
func (h *Hub) roomLocked(want int) (int, bool) {
	if h.inClosed {
		return 0, false
	}
	return min(max(h.o.IntakeSize-len(h.intake), 0), want), true
}

// unlockAdmitted ends an enqueue that appended n of want items: it
// publishes the seq and releases h.in (taken by the caller), then counts the
// items dropped and wakes the fan-out.
func (h *Hub) unlockAdmitted(n, want int) {
	h.lastSeq.Store(h.assigned)
	h.in.Unlock()
	if n < want {
		h.m.intakeDropped.Add(float64(want - n))
	}
	if n > 0 {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
}

// Status publishes a device's status change. Wire it to the live state's
// OnStatus (through cmd's fan-out); it never blocks.
func (h *Hub) Status(ev telemetry.StatusEvent) {
	h.enqueue(intakeItem{ev: statusEvent(ev)})
}

// Alert publishes an alert transition; it never blocks. ev.Alert is
// marshaled now; an alert that cannot be marshaled is logged and dropped.
func (h *Hub) Alert(ev AlertEvent) {
	raw, err := json.Marshal(ev.Alert)
	if err != nil {
		h.log.Error("stream: marshal alert", "device_id", ev.DeviceID, "transition", ev.Transition, "err", err)
		return
	}
	h.enqueue(intakeItem{ev: alertEvent(ev, raw)})
}

// loop runs the fan-out until Close: when the intake is not empty, at most
// once per FlushInterval.
func (h *Hub) loop() {
	defer close(h.loopDone)
	var (
		last time.Time
		tail bool
	)
	for {
		if !tail {
			select {
			case <-h.wake:
			case <-h.stop:
				return
			}
		}
		// Pacing on the wall clock is not a decision: time.Now is fine.
		if wait := time.Until(last.Add(h.o.FlushInterval)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-h.stop:
				t.Stop()
				return
			}
		}
		last = time.Now()
		var (
			sent   int
			widest bool
		)
		sent, widest, tail = h.flush()
		// Stay within MaxSendRate. The stride does it (fewer clients per
		// flush); once it is as wide as the window, a flush that handed
		// out n events (per client) pushes the next one back by
		// n/MaxSendRate, so readings coalesce over a longer window instead
		// of the stream taking the CPU that ingest (and the clients) need.
		if budget := time.Duration(float64(sent) / float64(h.o.MaxSendRate) * float64(time.Second)); widest && budget > h.o.FlushInterval {
			last = last.Add(budget - h.o.FlushInterval)
		}
	}
}

// flush takes the intake and fans it out: places each event, keeps it for
// replay, and queues it, per group, for the clients. It returns the events
// handed out (once per client), whether the stride is at its widest, and
// whether a tail runs (the next flush is due even if no event arrives).
func (h *Hub) flush() (sent int, widest, tail bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushLocked()
	n := h.handedOut
	h.handedOut = 0
	return n, h.stride >= windowSegs, !h.closed && h.tailingLocked()
}

// flushLocked is flush with h.mu held. Subscriptions call it too, so that
// a subscription sits behind every event published before it arrived.
func (h *Hub) flushLocked() {
	if h.closed {
		return
	}
	h.in.Lock()
	items := h.intake
	h.intake = h.spare[:0]
	h.in.Unlock()
	now := h.o.Now()
	if len(items) == 0 {
		h.spare = items
		h.fanOut(nil, now) // the tail, if one runs
		return
	}
	size := uint64(len(h.ring))
	seg := h.seg[:0]
	var (
		lastID  string
		lastDev *telemetry.Device
		looked  bool
	)
	for _, it := range items {
		if it.ev == nil {
			// A message for one client, behind the events before it
			// (which a staggered client has not been given yet).
			h.fanOut(seg, now)
			seg = seg[:0]
			if it.to.idx >= 0 {
				h.catchUpLocked(it.to, h.segNo, now)
			}
			h.pushLocked(it.to, item{ctl: it.ctl}, now)
			continue
		}
		e := it.ev
		if e.deviceID != "" && e.reg == nil {
			if !looked || e.deviceID != lastID {
				lastID, looked = e.deviceID, true
				lastDev, _ = h.o.Lookup(e.deviceID)
			}
			e.reg = lastDev
		}
		// Not encoded here: the first writer that sends it (or a replay)
		// does, once for every client, and an event nobody gets costs
		// no encoding and keeps no bytes in the ring.
		h.seq = e.seq // h.seq+1: the intake numbered them in order
		h.ring[h.seq%size] = e
		if h.ringLen < len(h.ring) {
			h.ringLen++
		}
		seg = append(seg, e)
	}
	h.fanOut(seg, now)
	clear(seg)
	h.seg = seg[:0]
	clear(items)
	h.spare = items[:0]
}

// fanOut makes evs a segment: it queues them, per group, for the group's
// clients whose turn it is (all of them while the stride is 1), one shared
// chunk per group, coalesced once when it holds more than CoalesceAbove
// events. A client whose turn it is after skipped segments gets them and
// this one in one window chunk. Called with h.mu held.
func (h *Hub) fanOut(evs []*event, now time.Time) {
	if len(evs) == 0 && !h.tailingLocked() {
		return
	}
	h.segNo++
	f := h.segNo
	if len(evs) > 0 {
		h.lastFull = f
	}
	// No segment hands out more than twice the budget: when clients
	// arrive together, or the load jumps, the clients over it wait for
	// their turn under the stride that the would-be total sets.
	budget := h.segBudget()
	handed, served, deferred := 0, 0, 0
	for _, g := range h.groups {
		matched := g.scratch[:0]
		for _, e := range evs {
			if g.m.match(e) {
				matched = append(matched, e)
			}
		}
		g.scratch = matched[:0]
		var ch *chunk
		if len(matched) > 0 {
			ch = &chunk{}
			// Staggered clients get a stride of segments in one window,
			// coalesced: coalescing the segment now already (the same
			// result) keeps the window to build at most a stride times the
			// group's devices.
			if len(matched) > h.o.CoalesceAbove || h.stride > 1 {
				ch.evs, ch.coalesced = coalesce(matched, &h.seen)
			} else {
				ch.evs = append([]*event(nil), matched...)
			}
		}
		clear(matched)
		g.segs[f%windowSegs], g.segAt[f%windowSegs] = ch, f
		g.win = nil
		// Backwards, so that dropping (swap with the last) skips no one.
		for i := len(g.clients) - 1; i >= 0; i-- {
			c := g.clients[i]
			if !h.dueLocked(c, f) {
				continue
			}
			if float64(handed) >= 2*budget && f-c.lastSeg < windowSegs/2 {
				deferred++
				continue
			}
			handed += h.catchUpLocked(c, f, now)
			served++
		}
	}
	h.handedOut += handed
	h.deferred = deferred
	if len(evs) > 0 {
		// Kept while the tail runs, so that each phase gets its turn.
		would := handed
		if deferred > 0 && served > 0 {
			would += deferred * handed / served
		}
		before := h.stride
		h.adjustStrideLocked(would)
		// lastFull served the phases due under the old stride: after a
		// change, only a whole new stride of segments reaches every phase
		// of the new one.
		h.tailSegs = h.stride - 1
		if h.stride != before {
			h.tailSegs = h.stride
		}
	}
}

// segBudget is how many events a segment should hand out (once per
// client): MaxSendRate × FlushInterval.
func (h *Hub) segBudget() float64 {
	return max(float64(h.o.MaxSendRate)*h.o.FlushInterval.Seconds(), 1)
}

// tailingLocked reports whether staggered clients may not have had their
// turn since the last segment with events: empty segments follow it until
// every phase had one, so the last events of a burst reach everyone.
func (h *Hub) tailingLocked() bool {
	// The phase of lastFull had its turn; the other stride-1 follow (a
	// whole stride when lastFull changed it).
	return h.segNo-h.lastFull < h.tailSegs || h.deferred > 0
}

// dueLocked reports whether segment f is c's turn: every stride-th segment,
// by its phase, or before its oldest skipped segment leaves the group's
// window. A stride change moves its next turn by less than the new stride.
func (h *Hub) dueLocked(c *client, f uint64) bool {
	return (f+c.phase)%h.stride == 0 || f-c.lastSeg >= windowSegs
}

// catchUpLocked queues for c what its group got in the segments since c's
// last turn, up to f, and returns what that counts against MaxSendRate
// (the events, plus writeCost when there were any).
func (h *Hub) catchUpLocked(c *client, f uint64, now time.Time) int {
	g := c.g
	from := c.lastSeg
	c.lastSeg = f
	if g == nil || from >= f {
		return 0
	}
	var ch *chunk
	if from+1 == f {
		ch = g.segs[f%windowSegs]
	} else {
		ch = g.window(from, f, h)
	}
	if ch == nil {
		return 0
	}
	if ch.coalesced > 0 {
		h.m.coalesced.Add(float64(ch.coalesced))
	}
	h.pushLocked(c, item{ch: ch}, now)
	return len(ch.evs) + writeCost
}

// writeCost is what one write to a client counts for against
// MaxSendRate, in events: a system call on the server (and a read on the
// client) cost as much as copying a few dozen events into a frame, and
// clients with narrow subscriptions get few events per write.
const writeCost = 32

// strideCheck is how many segments the stride is kept, at least, before it
// is reconsidered.
const strideCheck = 8

// adjustStrideLocked keeps the events handed out per segment near
// MaxSendRate × FlushInterval. Over it, the stride grows in proportion
// (each client's turn comes less often, and its window coalesces more
// readings of a device into one): at once when one segment handed out
// (would have handed out) more than twice the budget (clients just
// connected), otherwise when the
// average over a check period is over. Under half of it, the stride
// halves, which at most doubles what is handed out.
func (h *Hub) adjustStrideLocked(handed int) {
	h.ctlSegs++
	h.ctlHanded += handed
	budget := h.segBudget()
	if float64(handed) > 2*budget {
		h.stride = min(windowSegs, uint64(math.Ceil(float64(h.stride)*float64(handed)/budget)))
		h.ctlSegs, h.ctlHanded = 0, 0
		return
	}
	if h.ctlSegs < max(strideCheck, int(h.stride)) {
		return
	}
	ratio := float64(h.ctlHanded) / float64(h.ctlSegs) / budget
	switch {
	case ratio > 1:
		h.stride = min(windowSegs, uint64(math.Ceil(float64(h.stride)*ratio)))
	case ratio < 0.5 && h.stride > 1:
		h.stride /= 2
	}
	h.ctlSegs, h.ctlHanded = 0, 0
}

// pushLocked queues it for c and drops c when it is too far behind.
func (h *Hub) pushLocked(c *client, it item, now time.Time) {
	if reason := c.push(it, now); reason != "" {
		h.dropLocked(c, reason)
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

// leaveGroupLocked takes c out of its subscription group.
func (h *Hub) leaveGroupLocked(c *client) {
	g := c.g
	if g == nil {
		return
	}
	i := c.gidx
	last := len(g.clients) - 1
	g.clients[i] = g.clients[last]
	g.clients[i].gidx = i
	g.clients[last] = nil
	g.clients = g.clients[:last]
	c.g, c.gidx = nil, -1
	if len(g.clients) == 0 {
		delete(h.groups, g.m.key)
	}
}

func (h *Hub) joinGroupLocked(c *client, m *matcher) {
	h.leaveGroupLocked(c)
	g := h.groups[m.key]
	if g == nil {
		g = &group{m: m}
		h.groups[m.key] = g
	}
	c.g, c.gidx = g, len(g.clients)
	g.clients = append(g.clients, c)
	// The subscription's snapshot or replay covers every segment so far.
	c.lastSeg = h.segNo
}

func (h *Hub) removeLocked(c *client) {
	h.leaveGroupLocked(c)
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
	h.nclients.Add(-1)
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
	// Consecutive phases spread the clients evenly over any stride.
	c.phase = h.nextPhase
	h.nextPhase++
	h.nclients.Add(1)
	h.serving.Add(1)
	return true
}

// subscribe sets a client's filter and queues a snapshot at the current seq:
// the snapshot is built later, by the writer, so it reflects at least every
// event up to that seq, and every later matching event is queued behind it.
// An event newer than the seq may be reflected in the snapshot and arrive
// as well; applying it again is harmless (latest value, same status).
func (h *Hub) subscribe(c *client, m *matcher, batch bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.idx < 0 {
		return // dropped or gone
	}
	h.flushLocked()
	h.joinGroupLocked(c, m)
	c.subscribe(m, batch, h.seq, nil)
}

// resume replays the events after seq `after` that match m, if the ring
// still holds all of them; otherwise it falls back to a snapshot. It reports
// whether it replayed.
func (h *Hub) resume(c *client, m *matcher, batch bool, after uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.idx < 0 {
		return false
	}
	h.flushLocked()
	h.joinGroupLocked(c, m)
	oldest := h.seq + 1 - uint64(h.ringLen) // seq of the oldest event held
	if after > h.seq || after+1 < oldest {
		c.subscribe(m, batch, h.seq, nil)
		return false
	}
	replay := []*event{} // non-nil: a replay, even of nothing
	size := uint64(len(h.ring))
	for s := after + 1; s <= h.seq; s++ {
		if e := h.ring[s%size]; m.match(e) {
			replay = append(replay, e)
		}
	}
	c.subscribe(m, batch, 0, replay)
	return true
}

// Close disconnects every client with 1001 "going away", stops accepting
// connections and events, stops the fan-out and waits for the connections'
// goroutines to end (at most WriteWait plus CloseGrace for a stuck client).
func (h *Hub) Close() {
	h.in.Lock()
	h.inClosed = true
	h.intake = nil
	h.in.Unlock()
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.stop)
		for _, c := range h.clients {
			c.close(closeGoingAway)
			c.idx, c.g, c.gidx = -1, nil, -1
		}
		h.nclients.Add(-int64(len(h.clients)))
		h.clients = nil
		h.groups = map[string]*group{}
	}
	h.mu.Unlock()
	<-h.loopDone
	h.serving.Wait()
}

// Run closes the hub when ctx ends; it gives cmd the usual way to stop a
// component (the fan-out goroutine runs from NewHub to Close).
func (h *Hub) Run(ctx context.Context) error {
	<-ctx.Done()
	h.Close()
	return nil
}
