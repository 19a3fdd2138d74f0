package stream

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/infrawatch/infrawatch/telemetry"
)

// kind is the type of a stream event.
type kind uint8

const (
	kindReading kind = iota + 1
	kindStatus
	kindAlert
)

// String is the kind's name on the wire and in filters.
func (k kind) String() string {
	switch k {
	case kindReading:
		return EventReading
	case kindStatus:
		return EventStatus
	case kindAlert:
		return EventAlert
	}
	return "unknown"
}

// Event type names, as in a subscription's "events" list and the messages'
// "type".
const (
	EventReading = "reading"
	EventStatus  = "status"
	EventAlert   = "alert"
)

// AlertEvent is an alert transition for the stream. The hub marshals Alert
// when Alert is called, so the caller may change its value afterwards.
type AlertEvent struct {
	// Transition is what happened: firing, acknowledged, resolved, ...
	Transition string
	// Alert is the alert as GET /api/v1/alerts renders it (JSON-marshalable).
	Alert any
	// DeviceID, Site and Domain place the alert for subscription filters;
	// empty Site or Domain are taken from the device registry.
	DeviceID, Site, Domain string
}

// event is one numbered stream event. It is immutable once published (seq is
// set under the hub's lock before any client sees it), shared by every
// client's queue and the replay buffer, and encoded lazily by the first
// writer (or replay) that sends it: with no client connected, or none whose
// filter matches, it is never encoded.
//
// The replay ring holds DefaultReplaySize of them, readings and, in a fleet
// that is coming online, nearly as many status events, so both carry only
// what they need (88 bytes, 8-aligned: keep the small fields last). A
// status is a one-byte code; where the device is, the registry entry it
// was published with; alert fields, a status that has no code and a time
// that ts cannot hold sit behind x.
type event struct {
	seq      uint64
	deviceID string
	// reg is the device's registry entry when the event was published,
	// for filters (domain, site, location): entries are immutable and the
	// registry keeps the current one anyway, so pointing at it costs an
	// event 8 bytes and nothing per device. nil: not registered.
	reg *telemetry.Device
	// ts is the event's time in Unix nanoseconds (a time.Time takes 24
	// bytes). A time that int64 nanoseconds cannot hold (before 1678 or
	// after 2262, the zero time) is in x.time instead.
	ts     int64
	values []telemetry.Value // reading
	x      *eventExt         // alert; a status without a code; an out-of-range time

	// raw is the first byte of the encoded message, rawLen its length
	// (see encoded): 12 bytes where a slice and a sync.Once took 36, which
	// puts every event in the next smaller size class, 1 MB less in a full
	// replay ring.
	raw    atomic.Pointer[byte]
	rawLen atomic.Uint32
	kind   kind
	// A status event's status and previous status, in what was padding.
	status, previous statusCode
}

// place is where an event's device is, for filters.
type place struct {
	domain, site string
	lat, lon     float64
	hasLoc       bool
}

// where returns the event's place: the registry entry's, with the domain
// and site an alert names itself instead.
func (e *event) where() place {
	var p place
	if d := e.reg; d != nil {
		p.domain, p.site = d.Domain, d.Site
		if d.Located {
			p.lat, p.lon, p.hasLoc = d.Lat, d.Lon, true
		}
	}
	if x := e.x; x != nil {
		if x.domain != "" {
			p.domain = x.domain
		}
		if x.site != "" {
			p.site = x.site
		}
	}
	return p
}

// statusCode is a status as an event holds it: the statuses the live state
// reports have a code, so a status event needs no x; any other string
// (none today, but the hub does not own that list) is kept in x whole.
type statusCode uint8

const (
	statusNone statusCode = iota // ""
	statusOnline
	statusStale
	statusOffline
	statusUnknown
	statusOther // the string is in x
)

var statusNames = [...]string{
	statusNone:    "",
	statusOnline:  telemetry.StatusOnline,
	statusStale:   telemetry.StatusStale,
	statusOffline: telemetry.StatusOffline,
	statusUnknown: telemetry.StatusUnknown,
}

func statusCodeOf(s string) statusCode {
	for code, name := range statusNames {
		if s == name {
			return statusCode(code)
		}
	}
	return statusOther
}

// eventExt is what only a few events carry.
type eventExt struct {
	status, previous string // status, when its code is statusOther
	transition       string // alert
	alertJSON        []byte // alert, marshaled when published
	// domain, site: where an alert says it is, over the registry's.
	domain, site string
	// time, when bigTime: the event's time, which ts cannot hold.
	time    time.Time
	bigTime bool
}

// setReading fills e, a zero event, as a reading. values must not change
// afterwards.
func (e *event) setReading(deviceID string, t time.Time, values []telemetry.Value) {
	e.kind, e.deviceID, e.values = kindReading, deviceID, values
	e.setTime(t)
}

// withValues is a reading event and its values in one object: ingest
// hands the hub one reading per MQTT message, and the two live and die
// together in the replay ring, so one allocation serves for both (an
// event of 88 bytes and 32 per value: 128 bytes for one value, 192 for
// three, both size classes).
type withValues[A any] struct {
	ev   event
	vals A
}

// maxInline is the most values newReading allocates with their event.
const maxInline = 8

// newReading returns a zero event and room for n values, in one allocation
// for up to maxInline values.
func newReading(n int) (*event, []telemetry.Value) {
	switch n {
	case 1:
		p := new(withValues[[1]telemetry.Value])
		return &p.ev, p.vals[:]
	case 2:
		p := new(withValues[[2]telemetry.Value])
		return &p.ev, p.vals[:]
	case 3:
		p := new(withValues[[3]telemetry.Value])
		return &p.ev, p.vals[:]
	case 4:
		p := new(withValues[[4]telemetry.Value])
		return &p.ev, p.vals[:]
	case 5:
		p := new(withValues[[5]telemetry.Value])
		return &p.ev, p.vals[:]
	case 6:
		p := new(withValues[[6]telemetry.Value])
		return &p.ev, p.vals[:]
	case 7:
		p := new(withValues[[7]telemetry.Value])
		return &p.ev, p.vals[:]
	case 8:
		p := new(withValues[[8]telemetry.Value])
		return &p.ev, p.vals[:]
	}
	return new(event), make([]telemetry.Value, n)
}

func statusEvent(ev telemetry.StatusEvent) *event {
	e := &event{kind: kindStatus, deviceID: ev.DeviceID,
		status: statusCodeOf(ev.Status), previous: statusCodeOf(ev.Previous)}
	if e.status == statusOther || e.previous == statusOther {
		e.x = &eventExt{status: ev.Status, previous: ev.Previous}
	}
	e.setTime(ev.Time)
	return e
}

// statuses returns a status event's status and previous status.
func (e *event) statuses() (status, previous string) {
	x := e.ext()
	return statusName(e.status, x.status), statusName(e.previous, x.previous)
}

// statusName is code's string; other is the string x holds for statusOther.
func statusName(code statusCode, other string) string {
	if int(code) < len(statusNames) {
		return statusNames[code]
	}
	return other
}

// alertEvent is ev with its alert marshaled (alertJSON). An alert has no ts.
func alertEvent(ev AlertEvent, alertJSON []byte) *event {
	return &event{kind: kindAlert, deviceID: ev.DeviceID,
		x: &eventExt{transition: ev.Transition, alertJSON: alertJSON, domain: ev.Domain, site: ev.Site}}
}

// setTime sets the event's time: as Unix nanoseconds when they hold it
// exactly (the encoding, in UTC, is the same), in x otherwise.
func (e *event) setTime(t time.Time) {
	ns := t.UnixNano()
	if time.Unix(0, ns).Equal(t) {
		e.ts = ns
		return
	}
	if e.x == nil {
		e.x = &eventExt{}
	}
	e.x.time, e.x.bigTime = t, true
}

// time returns the event's time.
func (e *event) time() time.Time {
	if e.x != nil && e.x.bigTime {
		return e.x.time
	}
	return time.Unix(0, e.ts)
}

// ext returns the fields behind x (zero when there are none).
func (e *event) ext() *eventExt {
	if e.x == nil {
		return &noExt
	}
	return e.x
}

var noExt eventExt

// slot is the device's registry slot, by which readings are coalesced;
// noDev when it is not registered.
func (e *event) slot() uint32 {
	if e.reg == nil {
		return noDev
	}
	return e.reg.Slot
}

// merged returns a copy of reading e (same seq, time and place) whose values
// also hold the metrics of older that e lacks: coalescing keeps the newest
// value of every metric, not only the metrics of the newest reading.
func (e *event) merged(older *event) *event {
	var extra []telemetry.Value
	for _, ov := range older.values {
		found := false
		for _, v := range e.values {
			if v.Name == ov.Name {
				found = true
				break
			}
		}
		if !found {
			extra = append(extra, ov)
		}
	}
	if len(extra) == 0 {
		return e
	}
	vals := make([]telemetry.Value, 0, len(e.values)+len(extra))
	vals = append(append(vals, e.values...), extra...)
	return &event{seq: e.seq, kind: e.kind, deviceID: e.deviceID, reg: e.reg, ts: e.ts, x: e.x, values: vals,
		status: e.status, previous: e.previous}
}

// coalescedWith returns reading e and an earlier reading (by seq) of the
// same device as one reading at e's seq, its place in seq order. The reading
// with the later ts gives the ts and wins the metrics both have (e on a
// tie), as live state and a client that got both keep them: a late reading
// from a device's buffer must not hide a newer one it arrived after.
func (e *event) coalescedWith(earlier *event) *event {
	if !earlier.timeAfter(e) {
		return e.merged(earlier)
	}
	m := earlier.merged(e)
	if m == earlier {
		// Nothing merged in: earlier itself, shared, so copy it; otherwise
		// m is new and unpublished, and takes e's place as it is.
		m = &event{kind: earlier.kind, deviceID: earlier.deviceID, ts: earlier.ts, x: earlier.x, values: earlier.values,
			status: earlier.status, previous: earlier.previous}
	}
	m.seq, m.reg = e.seq, e.reg
	return m
}

// timeAfter reports whether e's time is after o's.
func (e *event) timeAfter(o *event) bool {
	if e.x == nil && o.x == nil {
		return e.ts > o.ts
	}
	return e.time().After(o.time())
}

// encoded returns the event's JSON message, encoding it on first use.
// Concurrent writers get the same bytes; they must not change them.
func (e *event) encoded() []byte {
	if p := e.raw.Load(); p != nil {
		return unsafe.Slice(p, e.rawLen.Load())
	}
	// Built on the stack and copied at its size: the copy stays in the
	// replay ring, and a reading (about 160 bytes) would keep 256 had a
	// heap buffer grown to hold it.
	var buf [256]byte
	b := bytes.Clone(e.encode(buf[:0]))
	// Writers that race here encode the same bytes (the event is
	// immutable), so each may store the length; the first to publish its
	// copy wins and the others use it. The length is stored before the
	// pointer that a reader loads first.
	e.rawLen.Store(uint32(len(b)))
	if e.raw.CompareAndSwap(nil, unsafe.SliceData(b)) {
		return b
	}
	return unsafe.Slice(e.raw.Load(), e.rawLen.Load())
}

// encode appends the message by hand: it is the hot path of the fan-out, and
// the shapes are fixed.
func (e *event) encode(b []byte) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, e.kind.String()...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, e.seq, 10)
	switch e.kind {
	case kindReading:
		b = append(b, `,"device_id":`...)
		b = appendString(b, e.deviceID)
		b = appendTime(b, e.time())
		b = append(b, `,"values":{`...)
		for i, v := range e.values {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, v.Name)
			b = append(b, ':')
			switch {
			case v.IsBool:
				b = strconv.AppendBool(b, v.Bool)
			case math.IsNaN(v.Num) || math.IsInf(v.Num, 0):
				b = append(b, "null"...) // ingest rejects these; JSON cannot carry them
			default:
				b = strconv.AppendFloat(b, v.Num, 'g', -1, 64)
			}
		}
		b = append(b, '}')
	case kindStatus:
		status, previous := e.statuses()
		b = append(b, `,"device_id":`...)
		b = appendString(b, e.deviceID)
		b = append(b, `,"status":`...)
		b = appendString(b, status)
		b = append(b, `,"previous":`...)
		b = appendString(b, previous)
		b = appendTime(b, e.time())
	case kindAlert:
		x := e.ext()
		b = append(b, `,"transition":`...)
		b = appendString(b, x.transition)
		b = append(b, `,"alert":`...)
		b = append(b, x.alertJSON...)
	}
	return append(b, '}')
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, `,"ts":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Websocket text frames must be
// valid UTF-8 (a browser fails the connection otherwise), so invalid bytes
// become U+FFFD.
func appendString(b []byte, s string) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
