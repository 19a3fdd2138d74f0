package devices

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Status thresholds, in multiples of the device's expected interval.
const (
	StaleAfter   = 2
	OfflineAfter = 5
)

// DefaultSweepInterval is how often Run checks for devices gone quiet.
const DefaultSweepInterval = time.Second

// noProfile is the profile of the devices that Live's default lookup makes up.
var noProfile telemetry.Profile

// LiveOptions configures a Live. Zero fields get defaults.
type LiveOptions struct {
	// Lookup finds a registered device (Registry.Lookup). Readings and status
	// messages for devices it does not know are ignored, so state never grows
	// past the registry. Nil accepts every device, with no expected interval,
	// so such devices never go stale (meant for tests). A device's state is
	// keyed by the returned Device.ID when it equals the id asked for, so
	// that string must not alias memory the caller reuses (the registry's
	// never does).
	Lookup func(id string) (*telemetry.Device, bool)
	// Now is the clock for arrival times; default time.Now.
	Now func() time.Time
	// OnStatus receives every status change, in order per device. It is
	// called with the device's lock held and must not block.
	OnStatus func(telemetry.StatusEvent)
	// SweepInterval is the period of Run; default DefaultSweepInterval.
	SweepInterval time.Duration
	// Registerer receives the gauges; nil registers nothing.
	Registerer prometheus.Registerer
	// Registered, when set, returns the number of registered devices, so
	// that the gauge can report those never heard from as "unknown".
	Registered func() int
}

// MetricValue is the latest value of one metric: a float64 or a bool, and
// the reading's own time, in UTC.
type MetricValue struct {
	Value any       `json:"value"`
	Time  time.Time `json:"ts"`
}

// State is a device's live state. Status is telemetry.StatusUnknown until
// the first reading or status message of the device after start-up, or
// until Seed restores its newest stored reading (LastSeen is then that
// reading's own time).
// LastSeen is when infrawatch last heard from the device (arrival time, not
// the reading's own timestamp, so that buffered or skewed clocks do not make
// a live device look stale), in UTC. It is counted on the monotonic clock
// from start-up (see monoBase), so it is off by however far the wall clock
// has been stepped since.
type State struct {
	DeviceID string                 `json:"device_id"`
	Status   string                 `json:"status"`
	LastSeen *time.Time             `json:"last_seen,omitempty"`
	Metrics  map[string]MetricValue `json:"metrics"`
}

// metricVal is a stored latest value, kept unboxed so that updating it
// allocates nothing, in 24 bytes: a fleet holds one per device and metric.
type metricVal struct {
	// name is interned: the same few names repeat across the fleet, and a
	// handle is half the size of a string.
	name unique.Handle[string]
	num  float64 // the number, or for a bool boolFalse or boolTrue
	t    int64   // the reading's time, Unix nanoseconds (see unixNano)
}

// A bool is kept in num as one of two NaNs, so that it needs no field of
// its own (one more byte would pad metricVal to 32 bytes). No number is
// NaN: ingest rejects NaN and Inf values (JSON cannot carry them anyway),
// and these payloads are not the NaN that arithmetic or math.NaN makes.
const (
	boolFalse uint64 = 0x7ff8_0000_0000_b000
	boolTrue  uint64 = boolFalse | 1
)

func boolNum(b bool) float64 {
	if b {
		return math.Float64frombits(boolTrue)
	}
	return math.Float64frombits(boolFalse)
}

// value returns the value as Get reports it: a float64 or a bool.
func (m *metricVal) value() any {
	switch math.Float64bits(m.num) {
	case boolTrue:
		return true
	case boolFalse:
		return false
	}
	return m.num
}

// Times are kept as int64 nanoseconds rather than time.Time (24 bytes, with
// its location pointer), and reported in UTC: the instant survives, the
// zone offset a reading was written in does not.

// minTime and maxTime are the times that int64 Unix nanoseconds can hold:
// the years 1678 to 2262.
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// unixNano returns a reading's time in Unix nanoseconds. Ingest passes only
// times within MaxAge and MaxFuture of its clock, and the config caps those
// at 10 years and 1 year; but ingest.Options alone accepts a MaxFuture of up
// to 292 years, past 2262, and callers other than ingest may pass anything.
// Such a time is clamped to the range, where UnixNano would wrap around.
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(minTime):
		return math.MinInt64
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// monoBase is when the process started, with the monotonic clock reading
// that time.Now gives. A last-seen time is kept as its distance from
// monoBase (t.Sub(monoBase)): for times from time.Now that distance is
// measured on the monotonic clock, so the sweep's quiet times are too, and
// a step of the wall clock neither ages nor revives devices. A clock without
// monotonic reading (a test's) is measured on the wall clock, which Sub does
// just as well.
var monoBase = time.Now()

func sinceBase(t time.Time) int64 { return int64(t.Sub(monoBase)) }

// seenTime turns a last-seen distance back into a time (Get reports it in
// UTC).
func seenTime(d int64) time.Time { return monoBase.Add(time.Duration(d)) }

// status is a live status as one byte (an entry per device adds up).
type status uint8

const (
	stUnknown status = iota
	stOnline
	stStale
	stOffline
)

var statusNames = [...]string{
	stUnknown: telemetry.StatusUnknown,
	stOnline:  telemetry.StatusOnline,
	stStale:   telemetry.StatusStale,
	stOffline: telemetry.StatusOffline,
}

func (s status) String() string { return statusNames[s] }

// entry is the live state of one device, guarded by its own mutex so that
// readings of different devices never contend. It fits in 48 bytes.
type entry struct {
	mu sync.Mutex
	// lastSeen is when the device was last heard from, as sinceBase of the
	// arrival time; meaningless until seen.
	lastSeen int64
	// metrics is sorted by name: a slice of a few values costs a fraction of
	// a map, and binary search is as fast at these sizes.
	metrics []metricVal
	status  status
	seen    bool
	gone    bool // forgotten: a Consume that still holds the pointer must not count it
	// seeded: lastSeen and metrics come from storage (Seed), and nothing
	// has been heard from the device since start-up.
	seeded bool
}

// find returns the index of name in e.metrics, or where to insert it.
func (e *entry) find(name string) (int, bool) {
	return slices.BinarySearchFunc(e.metrics, name, func(m metricVal, name string) int {
		return strings.Compare(m.name.Value(), name)
	})
}

// heard moves lastSeen to d (a sinceBase) unless it is later already.
func (e *entry) heard(d int64) {
	e.seeded = false
	if !e.seen || d > e.lastSeen {
		e.lastSeen, e.seen = d, true
	}
}

// Live is the live state of every device heard from. It implements
// telemetry.Consumer.
type Live struct {
	lookup        func(id string) (*telemetry.Device, bool)
	now           func() time.Time
	onStatus      func(telemetry.StatusEvent)
	sweepInterval time.Duration

	entries *liveIndex
	// seedOutage is the quiet time (nanoseconds) that the sweep does not
	// count against seeded entries: see Seed.
	seedOutage atomic.Int64

	// Devices per status among those tracked, kept by transitions so that a
	// scrape need not walk every entry.
	online, stale, offline atomic.Int64
	registered             func() int
	changes                *prometheus.CounterVec
}

// NewLive returns an empty Live. Metrics that cannot be registered are logged
// and left unregistered.
func NewLive(o LiveOptions) *Live {
	l := &Live{
		lookup:        o.Lookup,
		now:           o.Now,
		onStatus:      o.OnStatus,
		sweepInterval: o.SweepInterval,
		entries:       new(liveIndex),
	}
	if l.lookup == nil {
		// The clone: entries are keyed by the returned ID (see entry).
		l.lookup = func(id string) (*telemetry.Device, bool) {
			return &telemetry.Device{ID: strings.Clone(id), Profile: &noProfile}, true
		}
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.onStatus == nil {
		l.onStatus = func(telemetry.StatusEvent) {}
	}
	if l.sweepInterval <= 0 {
		l.sweepInterval = DefaultSweepInterval
	}
	l.changes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "infrawatch_device_status_changes_total",
		Help: "Device status changes, by new status.",
	}, []string{"status"})
	l.registered = o.Registered
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{statusCollector{l}, l.changes} {
			if err := o.Registerer.Register(c); err != nil {
				slog.Error("register live state metrics", "err", err)
			}
		}
	}
	return l
}

// counter returns the per-status count for s, or nil for unknown.
func (l *Live) counter(s status) *atomic.Int64 {
	switch s {
	case stOnline:
		return &l.online
	case stStale:
		return &l.stale
	case stOffline:
		return &l.offline
	}
	return nil
}

// setStatus moves e to status s at time t and reports the change. Called with
// e.mu held; a no-op when the status does not change.
func (l *Live) setStatus(id string, e *entry, s status, t time.Time) {
	prev := e.status
	if prev == s || e.gone {
		return
	}
	e.status = s
	if c := l.counter(prev); c != nil {
		c.Add(-1)
	}
	if c := l.counter(s); c != nil {
		c.Add(1)
	}
	l.changes.WithLabelValues(s.String()).Inc()
	l.onStatus(telemetry.StatusEvent{DeviceID: id, Status: s.String(), Previous: prev.String(), Time: t})
}

// entry returns the device's entry, creating it for a registered device.
func (l *Live) entry(id string) (*entry, bool) {
	if e, ok := l.entries.get(id); ok {
		return e, true
	}
	dev, ok := l.lookup(id)
	if !ok {
		return nil, false
	}
	// The id may alias a buffer the caller reuses: key the entry by the
	// registry's own copy when it has one.
	if dev != nil && dev.ID == id {
		id = dev.ID
	} else {
		id = strings.Clone(id)
	}
	return l.entries.add(id), true
}

// Consume records readings: each makes its device online and updates the
// latest value of each metric unless a newer one is already held. It keeps
// no reference to readings. Readings of unregistered devices are ignored.
func (l *Live) Consume(readings []telemetry.Reading) {
	if len(readings) == 0 {
		return
	}
	now := l.now()
	seen := sinceBase(now)
	var (
		lastID string
		e      *entry
		ok     bool
	)
	for i := range readings {
		rd := &readings[i]
		// A message usually holds readings of one device: look it up once.
		if e == nil || rd.DeviceID != lastID {
			if e, ok = l.entry(rd.DeviceID); !ok {
				e = nil
				continue
			}
			lastID = rd.DeviceID
		}
		e.mu.Lock()
		if e.gone {
			e.mu.Unlock()
			continue
		}
		e.record(rd)
		e.heard(seen)
		l.setStatus(lastID, e, stOnline, now)
		e.mu.Unlock()
	}
}

// record keeps rd's values where they are newer than those held. Called
// with e.mu held.
func (e *entry) record(rd *telemetry.Reading) {
	ts := unixNano(rd.Time)
	for j := range rd.Values {
		v := &rd.Values[j]
		i, found := e.find(v.Name)
		if !found {
			e.grow(rd.Values[j:])
			// Interned: the name may alias the caller's buffer, and one
			// copy serves every device that reports this metric.
			e.metrics = slices.Insert(e.metrics, i, metricVal{name: unique.Make(v.Name)})
		} else if ts < e.metrics[i].t {
			continue // an older reading arriving late: keep the newest
		}
		m := &e.metrics[i]
		m.t = ts
		if v.IsBool {
			m.num = boolNum(v.Bool)
		} else {
			m.num = v.Num
		}
	}
}

// Seed restores, at start-up, the state of devices not heard from since:
// readings are each device's newest stored values (store.LastReadings).
// A seeded device takes its newest reading's time as last seen and is
// online as of then, without a status event: nothing changed, and an
// online event would resolve a device_offline alert restored from before
// the restart. The sweep then demotes it as usual, with events, so a
// device that died before the restart goes stale and offline and its
// device_offline alert fires.
//
// outage is how long infrawatch stored nothing before this start (a
// deploy, a crash): the sweep does not count it as the quiet time of a
// seeded device, as no device could be heard then. Without that, every
// device would go offline at the first sweep after an outage longer than
// OfflineAfter intervals, paging for the whole fleet before it had time
// to reconnect. A device quiet before the outage began is judged by that
// quiet time alone, and one heard from since is no longer seeded.
//
// Readings of devices not registered, or heard from since start-up, are
// ignored. Seed returns the number of devices seeded.
func (l *Live) Seed(readings []telemetry.Reading, outage time.Duration) int {
	l.seedOutage.Store(int64(max(outage, 0)))
	n := 0
	for i := range readings {
		rd := &readings[i]
		e, ok := l.entry(rd.DeviceID)
		if !ok {
			continue
		}
		e.mu.Lock()
		if e.gone || (e.seen && !e.seeded) {
			e.mu.Unlock()
			continue
		}
		if !e.seeded {
			n++
		}
		e.record(rd)
		if d := sinceBase(rd.Time); !e.seen || d > e.lastSeen {
			e.lastSeen, e.seen = d, true
		}
		e.seeded = true
		// A device without an expected interval goes offline only by its
		// status message, which may have come before the restart (and an
		// embedded broker's retained one does not survive it): online
		// would be a guess that nothing corrects, so it stays unknown.
		if dev, ok := l.lookup(rd.DeviceID); ok && dev.Interval > 0 && e.status == stUnknown {
			e.status = stOnline
			l.online.Add(1)
		}
		e.mu.Unlock()
	}
	return n
}

// grow makes room, in one allocation of the exact size, for the metrics of
// vals the entry does not hold yet (vals[0] is known to be new).
func (e *entry) grow(vals []telemetry.Value) {
	n := 0
	for _, v := range vals {
		if _, found := e.find(v.Name); !found {
			n++
		}
	}
	if len(e.metrics)+n > cap(e.metrics) {
		grown := make([]metricVal, len(e.metrics), len(e.metrics)+n)
		copy(grown, e.metrics)
		e.metrics = grown
	}
}

// DeviceStatus records a device's own status message (devices/<id>/status):
// online, or offline as published by the device or as its last will. at is
// when it arrived. Unregistered devices are ignored.
func (l *Live) DeviceStatus(id string, online bool, at time.Time) {
	e, ok := l.entry(id)
	if !ok {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gone {
		return
	}
	if online {
		e.heard(sinceBase(at))
		l.setStatus(id, e, stOnline, at)
		return
	}
	l.setStatus(id, e, stOffline, at)
}

// nextStatus is the status a device in status cur should have after quiet
// time since it was last heard, given its expected interval. The sweep only
// ever demotes: online → stale at StaleAfter×interval, online or stale →
// offline at OfflineAfter×interval. Unknown and offline stay as they are, and
// a zero interval means the device never goes stale.
func nextStatus(cur status, quiet, interval time.Duration) status {
	if interval <= 0 {
		return cur
	}
	switch cur {
	case stOnline, stStale:
		if quiet >= OfflineAfter*interval {
			return stOffline
		}
		if quiet >= StaleAfter*interval {
			return stStale
		}
	}
	return cur
}

// Sweep applies nextStatus to every device at time now, emitting an event per
// change, and drops the state of devices no longer registered.
func (l *Live) Sweep(now time.Time) {
	nowD := sinceBase(now)
	l.entries.all(func(id string, e *entry) bool {
		dev, ok := l.lookup(id)
		if !ok {
			l.Forget(id)
			return true
		}
		e.mu.Lock()
		if !e.gone && e.seen {
			quiet := time.Duration(nowD - e.lastSeen)
			if e.seeded {
				quiet -= time.Duration(l.seedOutage.Load())
			}
			if s := nextStatus(e.status, quiet, dev.Interval); s != e.status {
				l.setStatus(id, e, s, now)
			}
		}
		e.mu.Unlock()
		return true
	})
}

// Run sweeps every SweepInterval until ctx is done.
func (l *Live) Run(ctx context.Context) {
	t := time.NewTicker(l.sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.Sweep(l.now())
		}
	}
}

// Get returns a copy of a device's live state. A registered device not heard
// from yet has status unknown and no metrics; ok is false only for a device
// that is neither tracked nor registered.
func (l *Live) Get(id string) (State, bool) {
	e, ok := l.entries.get(id)
	if !ok {
		if _, reg := l.lookup(id); !reg {
			return State{}, false
		}
		return State{DeviceID: id, Status: telemetry.StatusUnknown, Metrics: map[string]MetricValue{}}, true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	st := State{DeviceID: id, Status: e.status.String(), Metrics: make(map[string]MetricValue, len(e.metrics))}
	if e.seen {
		t := seenTime(e.lastSeen).UTC()
		st.LastSeen = &t
	}
	for i := range e.metrics {
		m := &e.metrics[i]
		st.Metrics[m.name.Value()] = MetricValue{Value: m.value(), Time: time.Unix(0, m.t).UTC()}
	}
	return st, true
}

// Forget drops a device's state (after it was deleted from the registry).
// Delete the device from the registry first, so that a reading in flight
// cannot bring the state back.
func (l *Live) Forget(id string) {
	e, ok := l.entries.remove(id)
	if !ok {
		return
	}
	e.mu.Lock()
	e.gone = true
	if c := l.counter(e.status); c != nil {
		c.Add(-1)
	}
	e.mu.Unlock()
}

// liveIndex maps device id → *entry. Lookups, on every reading, take no
// lock: each of fanout² buckets is an immutable slice sorted by hash (the
// shardEntry, locate and search of shardedMap), replaced whole, under its
// stripe's mutex, when an entry is added (a device's first reading) or
// removed. At 100,000 devices a bucket holds ~25 entries, so a write copies
// ~800 bytes.
//
// The alternatives cost more: a sync.Map twice the memory per device (trie
// nodes, the boxed key); map shards behind RWMutexes an atomic add per
// lookup on a line that the other cores write too; and a shardedMap,
// copied from its root on each write, ~3 KB of garbage per new device.
type liveIndex struct {
	buckets [fanout * fanout]atomic.Pointer[[]shardEntry[*entry]]
	stripes [fanout]sync.Mutex // writers of buckets [i*fanout, (i+1)*fanout)
}

func (x *liveIndex) get(id string) (*entry, bool) {
	h, i, j := locate(id)
	if p := x.buckets[i*fanout+j].Load(); p != nil {
		if k, ok := search(*p, h, id); ok {
			return (*p)[k].val, true
		}
	}
	return nil, false
}

// add returns id's entry, creating it when there is none.
func (x *liveIndex) add(id string) *entry {
	h, i, j := locate(id)
	b := &x.buckets[i*fanout+j]
	x.stripes[i].Lock()
	defer x.stripes[i].Unlock()
	var es []shardEntry[*entry]
	if p := b.Load(); p != nil {
		es = *p
	}
	k, found := search(es, h, id)
	if found {
		return es[k].val
	}
	e := &entry{}
	next := slices.Concat(es[:k], []shardEntry[*entry]{{hash: h, key: id, val: e}}, es[k:])
	b.Store(&next)
	return e
}

// remove drops id's entry and returns it.
func (x *liveIndex) remove(id string) (*entry, bool) {
	h, i, j := locate(id)
	b := &x.buckets[i*fanout+j]
	x.stripes[i].Lock()
	defer x.stripes[i].Unlock()
	p := b.Load()
	if p == nil {
		return nil, false
	}
	k, found := search(*p, h, id)
	if !found {
		return nil, false
	}
	e := (*p)[k].val
	if next := slices.Concat((*p)[:k], (*p)[k+1:]); len(next) > 0 {
		b.Store(&next)
	} else {
		b.Store(nil)
	}
	return e, true
}

// all yields every entry, in no particular order. An entry added or removed
// meanwhile may or may not be seen.
func (x *liveIndex) all(yield func(string, *entry) bool) {
	for i := range x.buckets {
		if p := x.buckets[i].Load(); p != nil {
			for _, se := range *p {
				if !yield(se.key, se.val) {
					return
				}
			}
		}
	}
}

// statusCollector reports devices by status from Live's counters.
type statusCollector struct{ l *Live }

var statusDesc = prometheus.NewDesc("infrawatch_devices",
	"Devices by live status (unknown: registered, not heard from since start-up).",
	[]string{"status"}, nil)

// Describe implements prometheus.Collector.
func (c statusCollector) Describe(ch chan<- *prometheus.Desc) { ch <- statusDesc }

// Collect implements prometheus.Collector.
func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.l
	on, st, off := l.online.Load(), l.stale.Load(), l.offline.Load()
	for s, n := range map[string]int64{
		telemetry.StatusOnline: on, telemetry.StatusStale: st, telemetry.StatusOffline: off,
	} {
		ch <- prometheus.MustNewConstMetric(statusDesc, prometheus.GaugeValue, float64(n), s)
	}
	if l.registered != nil {
		unknown := max(0, int64(l.registered())-on-st-off)
		ch <- prometheus.MustNewConstMetric(statusDesc, prometheus.GaugeValue, float64(unknown), telemetry.StatusUnknown)
	}
}
