package devices

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unique"
	"unsafe"

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
	// past the registry. A device's state is kept at its Slot, which must be
	// unique among the devices Lookup finds at one time (the registry's
	// are), and names it by the returned Device.ID, which must not alias
	// memory the caller reuses (the registry's never does). Nil accepts
	// every device, numbering them as they come, with no expected interval,
	// so such devices never go stale (meant for tests).
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
// allocates nothing, in 16 bytes: a fleet holds one per device and metric.
// Its name is the entry's name set's at the same index.
type metricVal struct {
	num float64 // the number, or for a bool boolFalse or boolTrue
	t   int64   // the reading's time, Unix nanoseconds (see unixNano)
}

// nameSet is the sorted metric names of a device's values. Devices of one
// type report the same metrics, so entries share the set (interned in
// Live.sets, counted by reference) and keep only their values: at 100,000
// devices of three metrics each, 48 bytes of values per device instead of
// 80 with a name beside each value.
type nameSet = shared[[]unique.Handle[string]]

// A bool is kept in num as one of two NaNs, so that it needs no field of
// its own (one more byte would pad metricVal to 24 bytes). No number is
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
// readings of different devices never contend. Entries sit in arrays by
// registry slot (liveSlots), 48 bytes each: no index, no allocation per
// device but its metrics.
type entry struct {
	mu sync.Mutex
	// dev is the registry entry of the device whose state this is (only
	// its ID is used; the sweep refreshes it after an update, which keeps
	// the slot); nil while the slot is free.
	dev *telemetry.Device
	// lastSeen is when the device was last heard from, as sinceBase of the
	// arrival time; meaningless until seen.
	lastSeen int64
	// names are the metrics' names, sorted (a slice of a few values costs a
	// fraction of a map, and binary search is as fast at these sizes), and
	// valp points at their values, as many (see vals): a pointer where a
	// slice header would take 24 bytes. Both nil: no metrics yet.
	names  *nameSet
	valp   *metricVal
	status status
	seen   bool
	// seeded: lastSeen and metrics come from storage (Seed), and nothing
	// has been heard from the device since start-up.
	seeded bool
}

// maxMetrics is the most metrics an entry holds: values of further metric
// names are not kept in the live state (ingest still stores them), which
// bounds what a device sending ever new names can make Live hold.
const maxMetrics = 1024

// nameList returns the metrics' names, sorted.
func (e *entry) nameList() []unique.Handle[string] {
	if e.names == nil {
		return nil
	}
	return e.names.val
}

// vals returns the metrics' values, in the order of nameList.
func (e *entry) vals() []metricVal {
	if e.names == nil {
		return nil
	}
	return unsafe.Slice(e.valp, len(e.names.val))
}

// find returns the index of name in the metrics, or where to insert it.
func (e *entry) find(name string) (int, bool) {
	return slices.BinarySearchFunc(e.nameList(), name, func(h unique.Handle[string], name string) int {
		return strings.Compare(h.Value(), name)
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

	slots liveSlots
	// sets interns the entries' metric name sets (see nameSet).
	setsMu sync.Mutex
	sets   internTable[[]unique.Handle[string]]
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
	}
	if l.lookup == nil {
		l.lookup = numbering()
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

// numbering is the Lookup of a Live made without one: every id is a
// device, numbered in order of first use.
func numbering() func(id string) (*telemetry.Device, bool) {
	var mu sync.Mutex
	devs := map[string]*telemetry.Device{}
	return func(id string) (*telemetry.Device, bool) {
		mu.Lock()
		defer mu.Unlock()
		d, ok := devs[id]
		if !ok {
			// The clone: entries name their device by its ID (see entry).
			d = &telemetry.Device{ID: strings.Clone(id), Profile: &noProfile, Slot: uint32(len(devs))}
			devs[d.ID] = d
		}
		return d, true
	}
}

// setStatus moves e to status s at time t and reports the change. Called with
// e.mu held; a no-op when the status does not change or the slot is free.
func (l *Live) setStatus(e *entry, s status, t time.Time) {
	prev := e.status
	if prev == s || e.dev == nil {
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
	l.onStatus(telemetry.StatusEvent{DeviceID: e.dev.ID, Status: s.String(), Previous: prev.String(), Time: t})
}

// lock returns the entry of registered device id, locked, claiming its
// slot when the slot is free or held by a device no longer registered
// there; nil when id is not registered, or is a deleted device whose slot
// another device now holds (its readings still in flight). dev, when not
// nil, is id's registry entry as the caller found it (a reading's Device):
// a device that holds its slot needs no lookup then.
func (l *Live) lock(id string, dev *telemetry.Device) *entry {
	if dev == nil || dev.ID != id {
		var ok bool
		if dev, ok = l.lookup(id); !ok {
			return nil
		}
	}
	e := l.slots.at(dev.Slot, true)
	e.mu.Lock()
	if e.dev != nil && e.dev.ID == id {
		return e
	}
	// Claiming the slot: dev was looked up before e.mu was taken, and the
	// device may have been deleted since and its slot cleared (Forget, the
	// sweep). Asked again under e.mu, the registry has seen any delete
	// whose clear came first; a later one clears after us.
	cur, ok := l.lookup(id)
	if !ok || cur.Slot != dev.Slot {
		e.mu.Unlock()
		return nil
	}
	if e.dev != nil {
		// The slot changed hands, and the registry just said it is id's
		// (slots are unique): the holder was deleted.
		l.clear(e)
	}
	e.dev = cur
	return e
}

// clear frees e's slot, taking its device out of the status counts without
// an event. Called with e.mu held.
func (l *Live) clear(e *entry) {
	if c := l.counter(e.status); c != nil {
		c.Add(-1)
	}
	e.dev, e.lastSeen = nil, 0
	l.setNames(e, nil)
	e.status, e.seen, e.seeded = stUnknown, false, false
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
	// A message usually holds readings of one device: look it up and lock
	// it once for the run.
	var e *entry
	for i := range readings {
		rd := &readings[i]
		if e == nil || rd.DeviceID != e.dev.ID {
			if e != nil {
				e.mu.Unlock()
			}
			if e = l.lock(rd.DeviceID, rd.Device); e == nil {
				continue
			}
		}
		l.record(e, rd)
		e.heard(seen)
		l.setStatus(e, stOnline, now)
	}
	if e != nil {
		e.mu.Unlock()
	}
}

// record keeps rd's values where they are newer than those held. Called
// with e.mu held.
func (l *Live) record(e *entry, rd *telemetry.Reading) {
	ts := unixNano(rd.Time)
	for j := range rd.Values {
		v := &rd.Values[j]
		i, found := e.find(v.Name)
		if !found {
			if len(e.nameList()) >= maxMetrics {
				continue // full: no new names
			}
			l.grow(e, rd.Values[j:])
			if i, found = e.find(v.Name); !found {
				continue // past maxMetrics
			}
		} else if ts < e.vals()[i].t {
			continue // an older reading arriving late: keep the newest
		}
		m := &e.vals()[i]
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
		e := l.lock(rd.DeviceID, rd.Device)
		if e == nil {
			continue
		}
		if e.seen && !e.seeded {
			e.mu.Unlock()
			continue
		}
		if !e.seeded {
			n++
		}
		l.record(e, rd)
		if d := sinceBase(rd.Time); !e.seen || d > e.lastSeen {
			e.lastSeen, e.seen = d, true
		}
		e.seeded = true
		// A device without an expected interval goes offline only by its
		// status message, which may have come before the restart (and an
		// embedded broker's retained one does not survive it): online
		// would be a guess that nothing corrects, so it stays unknown.
		if e.dev.Interval > 0 && e.status == stUnknown {
			e.status = stOnline
			l.online.Add(1)
		}
		e.mu.Unlock()
	}
	return n
}

// grow adds the metrics of vals that the entry does not hold yet (vals[0]
// is known to be new), up to maxMetrics, each older than any reading until
// set. Called with e.mu held.
func (l *Live) grow(e *entry, vals []telemetry.Value) {
	names := slices.Clone(e.nameList())
	for _, v := range vals {
		if len(names) >= maxMetrics {
			break
		}
		i, found := slices.BinarySearchFunc(names, v.Name, func(h unique.Handle[string], name string) int {
			return strings.Compare(h.Value(), name)
		})
		if !found {
			// Interned: the name may alias the caller's buffer, and one
			// copy serves every device that reports this metric.
			names = slices.Insert(names, i, unique.Make(v.Name))
		}
	}
	if len(names) == len(e.nameList()) {
		return
	}
	old, oldVals := e.nameList(), e.vals()
	grown := make([]metricVal, len(names))
	k := 0
	for i, h := range names {
		if k < len(old) && old[k] == h {
			grown[i] = oldVals[k]
			k++
		} else {
			grown[i].t = math.MinInt64
		}
	}
	l.setNames(e, names)
	e.valp = unsafe.SliceData(grown)
}

// setNames makes names (nil: none) e's name set, sharing the interned copy,
// and lets go of the one it had; the caller sets e.valp to match. Called
// with e.mu held.
func (l *Live) setNames(e *entry, names []unique.Handle[string]) {
	l.setsMu.Lock()
	defer l.setsMu.Unlock()
	l.sets.release(e.names)
	e.names, e.valp = nil, nil
	if len(names) == 0 {
		return
	}
	// Each name with its length before it: no name can make two sets' keys
	// equal.
	var key []byte
	for _, h := range names {
		key = strconv.AppendInt(key, int64(len(h.Value())), 10)
		key = append(key, ':')
		key = append(key, h.Value()...)
	}
	e.names = l.sets.acquire(string(key), func(string) []unique.Handle[string] { return slices.Clip(names) })
}

// DeviceStatus records a device's own status message (devices/<id>/status):
// online, or offline as published by the device or as its last will. at is
// when it arrived. Unregistered devices are ignored.
func (l *Live) DeviceStatus(id string, online bool, at time.Time) {
	e := l.lock(id, nil)
	if e == nil {
		return
	}
	defer e.mu.Unlock()
	if online {
		e.heard(sinceBase(at))
		l.setStatus(e, stOnline, at)
		return
	}
	l.setStatus(e, stOffline, at)
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
	l.slots.all(func(slot uint32, e *entry) bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.dev == nil {
			return true
		}
		dev, ok := l.lookup(e.dev.ID)
		if !ok || dev.Slot != slot {
			l.clear(e)
			return true
		}
		// The current registry entry: an update publishes a new one, and
		// the superseded one (with its profile) must not stay pinned here.
		e.dev = dev
		if e.seen {
			quiet := time.Duration(nowD - e.lastSeen)
			if e.seeded {
				quiet -= time.Duration(l.seedOutage.Load())
			}
			if s := nextStatus(e.status, quiet, dev.Interval); s != e.status {
				l.setStatus(e, s, now)
			}
		}
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
	dev, ok := l.lookup(id)
	if !ok {
		return State{}, false
	}
	unknown := State{DeviceID: id, Status: telemetry.StatusUnknown, Metrics: map[string]MetricValue{}}
	e := l.slots.at(dev.Slot, false)
	if e == nil {
		return unknown, true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.dev == nil || e.dev.ID != id {
		return unknown, true
	}
	st := State{DeviceID: id, Status: e.status.String(), Metrics: make(map[string]MetricValue, len(e.nameList()))}
	if e.seen {
		t := seenTime(e.lastSeen).UTC()
		st.LastSeen = &t
	}
	names, vals := e.nameList(), e.vals()
	for i := range vals {
		m := &vals[i]
		st.Metrics[names[i].Value()] = MetricValue{Value: m.value(), Time: time.Unix(0, m.t).UTC()}
	}
	return st, true
}

// Forget drops a device's state (after it was deleted from the registry).
// Delete the device from the registry first, so that a reading in flight
// cannot bring the state back. A device no longer registered is looked for
// in every slot: deletes are rare, and the sweep would drop it anyway.
func (l *Live) Forget(id string) {
	forget := func(e *entry) bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.dev != nil && e.dev.ID == id {
			l.clear(e)
			return true
		}
		return false
	}
	if dev, ok := l.lookup(id); ok {
		if e := l.slots.at(dev.Slot, false); e != nil {
			forget(e)
		}
		return
	}
	l.slots.all(func(_ uint32, e *entry) bool { return !forget(e) })
}

// liveSlots holds the entries by registry slot, in chunks of slotChunk
// that never move once allocated, so a pointer to an entry stays valid and
// finding one is an indexing, with no lock; only adding a chunk takes mu.
// Slots are dense (the registry reuses freed ones first), so the chunks are
// about as many as the devices need.
//
// It replaced an index by id (a hashed, copy-on-write table of pointers to
// entries allocated one by one): 34 bytes of index and 48 of entry per
// device, against 48 here.
type liveSlots struct {
	mu     sync.Mutex
	chunks atomic.Pointer[[]*[slotChunk]entry]
}

const slotChunk = 1024

// at returns the entry of slot, allocating its chunk when create is set;
// nil when the chunk is missing and create is not.
func (x *liveSlots) at(slot uint32, create bool) *entry {
	c, i := int(slot/slotChunk), slot%slotChunk
	if p := x.chunks.Load(); p != nil && c < len(*p) && (*p)[c] != nil {
		return &(*p)[c][i]
	}
	if !create {
		return nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	var cur []*[slotChunk]entry
	if p := x.chunks.Load(); p != nil {
		cur = *p
	}
	if c < len(cur) && cur[c] != nil {
		return &cur[c][i]
	}
	next := make([]*[slotChunk]entry, max(len(cur), c+1))
	copy(next, cur)
	next[c] = new([slotChunk]entry)
	x.chunks.Store(&next)
	return &next[c][i]
}

// all yields every entry with its slot, free ones included.
func (x *liveSlots) all(yield func(slot uint32, e *entry) bool) {
	p := x.chunks.Load()
	if p == nil {
		return
	}
	for c, chunk := range *p {
		if chunk == nil {
			continue
		}
		for i := range chunk {
			if !yield(uint32(c*slotChunk+i), &chunk[i]) {
				return
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
