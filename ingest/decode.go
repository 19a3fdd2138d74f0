package ingest

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Reasons for rejecting input: the label of
// infrawatch_ingest_rejected_total and the last segment of the dead letter
// topic infrawatch/deadletter/<reason>.
const (
	ReasonMalformedJSON = "malformed_json" // not JSON, invalid UTF-8, too deep, or not the shape of a payload
	ReasonBadValue      = "bad_value"      // a value that is not a finite number or a boolean, or no values
	ReasonBadMetric     = "bad_metric"     // a metric name outside [a-z][a-z0-9_]{0,63}, or repeated
	ReasonBadTimestamp  = "bad_timestamp"  // unreadable, older than MaxAge or more than MaxFuture ahead
	ReasonTooLarge      = "too_large"      // payload over MaxPayloadBytes or over MaxReadings readings
	ReasonUnknownDevice = "unknown_device" // not in the registry (and not auto-registered)
	ReasonRateLimited   = "rate_limited"   // the device publishes far faster than its interval
	ReasonNotAssigned   = "not_assigned"   // a gateway published for a device that is not assigned to it
	ReasonRetired       = "retired"        // the device's lifecycle is retired
)

// ReasonWriteRejected is the reason (label of
// infrawatch_ingest_dropped_total and dead letter topic) for readings that
// InfluxDB refused for good (400): they were accepted, then dropped.
const ReasonWriteRejected = "write_rejected"

// rejectReasons lists every rejection reason, to create the counters at
// zero.
var rejectReasons = []string{ReasonMalformedJSON, ReasonBadValue, ReasonBadMetric, ReasonBadTimestamp,
	ReasonTooLarge, ReasonUnknownDevice, ReasonRateLimited, ReasonNotAssigned, ReasonRetired}

// maxDepth bounds the nesting of a payload. The deepest legal path is
// gateway object > array > reading > values (4); anything much deeper is
// garbage, and the bound keeps skipping unknown members from recursing
// without limit.
const maxDepth = 16

// maxInterned bounds the decoder's table of metric names and device ids.
const maxInterned = 8192

// decodeLimits are the bounds a payload is checked against.
type decodeLimits struct {
	maxPayload  int
	maxReadings int
	maxAge      time.Duration
	maxFuture   time.Duration
}

// decodeError rejects a whole payload.
type decodeError struct {
	reason string
	msg    string
}

func (e *decodeError) Error() string { return e.reason + ": " + e.msg }

// decReading is one reading of a payload. Its values are
// decoder.values[vStart:vEnd]; reason is empty when it is valid.
type decReading struct {
	ts           time.Time
	vStart, vEnd int
	reason, err  string
}

// decGroup is the readings of one device: decoder.readings[rStart:rEnd].
// A device topic's payload is one group with an empty id; a gateway payload
// has one group per member. reason is set when the id is invalid.
type decGroup struct {
	id           string
	rStart, rEnd int
	reason, err  string
}

// decoder turns a telemetry payload into readings, checking syntax, UTF-8,
// nesting, sizes, metric names, values and timestamps. It is pure (the
// time is a parameter) and reuses its buffers between calls, so one decoder
// belongs to one goroutine and its results are valid until the next call.
//
// It is a small scanner written for this grammar rather than
// encoding/json: decoding into map[string]any (or json.Decoder's Token)
// allocates for every key and number, and this runs for every message.
type decoder struct {
	lim      decodeLimits
	now      time.Time
	arrival  time.Time // the ts of readings without one
	replayed bool      // arrival is before now: check readings without ts too
	data     []byte
	pos      int
	readings []decReading
	values   []telemetry.Value
	groups   []decGroup
	scratch  []byte
	interned map[string]string
}

func newDecoder(lim decodeLimits) *decoder {
	return &decoder{lim: lim, interned: make(map[string]string)}
}

// decode decodes payload; gateway selects the gateway form
// {"<device_id>": [reading, ...], ...}. Readings without ts get now. A
// non-nil error (a *decodeError) rejects the whole payload; otherwise
// d.groups holds at least one reading, and bad readings or groups carry
// their reason.
func (d *decoder) decode(payload []byte, gateway bool, now time.Time) error {
	return d.decodeAt(payload, gateway, now, now)
}

// decodeAt is decode for a message that arrived before now (a replayed dead
// letter): readings without ts get arrival, and every ts is checked
// against now.
func (d *decoder) decodeAt(payload []byte, gateway bool, now, arrival time.Time) error {
	d.now, d.arrival, d.replayed = now, arrival, !arrival.Equal(now)
	d.data, d.pos = payload, 0
	d.readings, d.values, d.groups = d.readings[:0], d.values[:0], d.groups[:0]
	defer func() { d.data = nil }() // do not keep the payload alive
	if len(payload) > d.lim.maxPayload {
		return &decodeError{ReasonTooLarge, fmt.Sprintf("payload of %d bytes is over the limit of %d", len(payload), d.lim.maxPayload)}
	}
	d.ws()
	var err error
	if gateway {
		err = d.gatewayPayload()
	} else {
		d.groups = append(d.groups, decGroup{})
		err = d.readingsValue(1, "payload")
		d.groups[0].rEnd = len(d.readings)
	}
	if err != nil {
		return err
	}
	d.ws()
	if d.pos != len(d.data) {
		return d.syntax("data after the payload")
	}
	if len(d.readings) == 0 {
		return &decodeError{ReasonBadValue, "payload holds no readings"}
	}
	return nil
}

// gatewayPayload reads {"<device_id>": readings, ...}.
func (d *decoder) gatewayPayload() error {
	if d.peek() != '{' {
		return d.syntax("a gateway payload must be an object of device ids")
	}
	return d.object(0, func(key []byte, escaped bool) error {
		g := decGroup{rStart: len(d.readings)}
		id := d.unescapeKey(key, escaped)
		if telemetry.ValidID(id) {
			g.id = d.intern(id)
		} else {
			g.id = string(id)
			g.reason, g.err = ReasonUnknownDevice, fmt.Sprintf("%q is not a valid device id", g.id)
		}
		if err := d.readingsValue(2, "device "+strconv.Quote(g.id)); err != nil {
			return err
		}
		g.rEnd = len(d.readings)
		d.groups = append(d.groups, g)
		return nil
	})
}

// readingsValue reads one reading or an array of readings.
func (d *decoder) readingsValue(depth int, what string) error {
	switch d.peek() {
	case '{':
		return d.reading(depth)
	case '[':
		return d.array(depth, func() error {
			if d.peek() != '{' {
				return d.syntax("a reading must be an object")
			}
			return d.reading(depth + 1)
		})
	default:
		return d.syntax(what + " must be a reading or an array of readings")
	}
}

// reading reads {"ts": ..., "values": {...}}; other members are ignored.
func (d *decoder) reading(depth int) error {
	if len(d.readings) >= d.lim.maxReadings {
		return &decodeError{ReasonTooLarge, fmt.Sprintf("payload has more than %d readings", d.lim.maxReadings)}
	}
	r := decReading{vStart: len(d.values)}
	var hasTS, hasValues bool
	bad := func(reason, msg string) {
		if r.reason == "" {
			r.reason, r.err = reason, msg
		}
	}
	err := d.object(depth, func(key []byte, escaped bool) error {
		switch string(d.unescapeKey(key, escaped)) {
		case "ts":
			if hasTS {
				bad(ReasonBadTimestamp, "ts given twice")
			}
			hasTS = true
			ts, msg, err := d.timestamp(depth + 1)
			if err != nil {
				return err
			}
			if msg != "" {
				bad(ReasonBadTimestamp, msg)
			}
			r.ts = ts
			return nil
		case "values":
			if hasValues {
				bad(ReasonBadValue, "values given twice")
			}
			hasValues = true
			if d.peek() != '{' {
				bad(ReasonBadValue, "values must be an object")
				return d.skip(depth + 1)
			}
			return d.object(depth+1, func(key []byte, escaped bool) error {
				return d.value(depth+2, d.unescapeKey(key, escaped), bad)
			})
		default:
			return d.skip(depth + 1)
		}
	})
	if err != nil {
		return err
	}
	r.vEnd = len(d.values)
	switch {
	case !hasValues:
		bad(ReasonBadValue, "reading has no values")
	case r.vEnd == r.vStart:
		bad(ReasonBadValue, "reading has no values")
	}
	if !hasTS {
		r.ts = d.arrival
	}
	if r.reason == "" && (hasTS || d.replayed) {
		// Compared as times: a Duration between now and a ts centuries
		// away saturates, and its negation overflows back to "not ahead".
		if r.ts.Before(d.now.Add(-d.lim.maxAge)) {
			bad(ReasonBadTimestamp, fmt.Sprintf("ts %s is older than %s", r.ts.UTC().Format(time.RFC3339Nano), d.lim.maxAge))
		} else if r.ts.After(d.now.Add(d.lim.maxFuture)) {
			bad(ReasonBadTimestamp, fmt.Sprintf("ts %s is more than %s ahead", r.ts.UTC().Format(time.RFC3339Nano), d.lim.maxFuture))
		}
	}
	if r.reason == "" && r.vEnd-r.vStart > 1 {
		// Sorted fields make a repeated name easy to find (and InfluxDB
		// would silently keep only one of them). Payloads usually come
		// sorted already (Go's encoding/json writes map keys in order):
		// then there is nothing to sort and, strictly ascending, no name
		// repeats.
		vals := d.values[r.vStart:r.vEnd]
		if !namesAscending(vals) {
			slices.SortFunc(vals, func(a, b telemetry.Value) int { return strings.Compare(a.Name, b.Name) })
			for i := 1; i < len(vals); i++ {
				if vals[i].Name == vals[i-1].Name {
					bad(ReasonBadMetric, fmt.Sprintf("metric %q given twice", vals[i].Name))
					break
				}
			}
		}
	}
	d.readings = append(d.readings, r)
	return nil
}

// namesAscending reports whether vals are in strictly ascending order of
// name.
func namesAscending(vals []telemetry.Value) bool {
	for i := 1; i < len(vals); i++ {
		if vals[i-1].Name >= vals[i].Name {
			return false
		}
	}
	return true
}

// value reads one metric value; bad reports a problem with the reading.
func (d *decoder) value(depth int, name []byte, bad func(reason, msg string)) error {
	nameOK := validMetric(name)
	if !nameOK {
		bad(ReasonBadMetric, fmt.Sprintf("metric name %q is not [a-z][a-z0-9_]{0,63}", name))
	}
	v := telemetry.Value{}
	switch c := d.peek(); {
	case c == 't' || c == 'f':
		b := c == 't'
		if err := d.literal(); err != nil {
			return err
		}
		v.IsBool, v.Bool = true, b
	case c == '-' || (c >= '0' && c <= '9'):
		raw, err := d.number()
		if err != nil {
			return err
		}
		f, perr := parseNumber(raw)
		if perr != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			bad(ReasonBadValue, fmt.Sprintf("metric %q: %s is not a finite number", name, raw))
			return nil
		}
		v.Num = f
	default:
		bad(ReasonBadValue, fmt.Sprintf("metric %q: a value must be a number or a boolean", name))
		return d.skip(depth)
	}
	if nameOK {
		v.Name = d.intern(name)
		d.values = append(d.values, v)
	}
	return nil
}

// parseNumber is strconv.ParseFloat(raw, 64) with a fast path for the
// numbers sensors send, a sign and up to 15 digits around an optional point
// (ParseFloat was 3 % of the process): the digits as an integer below 2^53
// divided by a power of ten up to 10^15 are both exact in a float64, so the
// one division is correctly rounded and gives ParseFloat's result (Clinger's
// fast path, which ParseFloat also takes after its general scan).
func parseNumber(raw []byte) (float64, error) {
	b := raw
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	var m uint64
	digits, frac := 0, -1
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
			m = m*10 + uint64(c-'0')
			digits++
		case c == '.' && frac < 0 && i > 0:
			frac = i
		default:
			return strconv.ParseFloat(string(raw), 64)
		}
	}
	if digits == 0 || digits > 15 || frac == len(b)-1 {
		return strconv.ParseFloat(string(raw), 64)
	}
	f := float64(m)
	if frac >= 0 {
		f /= pow10[len(b)-1-frac]
	}
	if neg {
		f = -f
	}
	return f, nil
}

var pow10 = [...]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15}

// parseMillis is strconv.ParseInt(raw, 10, 64) with a fast path for what
// devices send, up to 18 plain digits: ParseInt was 1.2 % of the process.
func parseMillis(raw []byte) (int64, error) {
	if len(raw) == 0 || len(raw) > 18 {
		return strconv.ParseInt(string(raw), 10, 64)
	}
	var n int64
	for _, c := range raw {
		if c < '0' || c > '9' {
			return strconv.ParseInt(string(raw), 10, 64)
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// maxTSMillis bounds numeric timestamps (year 2286) so that the conversion
// to nanoseconds cannot overflow.
const maxTSMillis = 1e13

// timestamp reads ts: Unix milliseconds or an RFC 3339 string. msg is set
// when the value is valid JSON but not a usable time.
func (d *decoder) timestamp(depth int) (t time.Time, msg string, err error) {
	switch c := d.peek(); {
	case c == '"':
		raw, escaped, err := d.str()
		if err != nil {
			return t, "", err
		}
		s := d.unescapeKey(raw, escaped)
		t, perr := time.Parse(time.RFC3339Nano, string(s))
		if perr != nil {
			return t, fmt.Sprintf("ts %q is not RFC 3339", s), nil
		}
		return t, "", nil
	case c == '-' || (c >= '0' && c <= '9'):
		raw, err := d.number()
		if err != nil {
			return t, "", err
		}
		if ms, perr := parseMillis(raw); perr == nil {
			if ms < 0 || ms >= maxTSMillis {
				return t, fmt.Sprintf("ts %s is out of range", raw), nil
			}
			return time.UnixMilli(ms), "", nil
		}
		f, perr := strconv.ParseFloat(string(raw), 64)
		if perr != nil || !(f >= 0 && f < maxTSMillis) {
			return t, fmt.Sprintf("ts %s is out of range", raw), nil
		}
		// Whole and fractional milliseconds apart: f*1e6 would lose the
		// fraction to float64's 53 bits. A float ms carries about a
		// quarter of a microsecond of precision today; keep microseconds.
		whole := math.Floor(f)
		us := math.Round((f - whole) * 1e3)
		return time.UnixMilli(int64(whole)).Add(time.Duration(us) * time.Microsecond), "", nil
	default:
		if err := d.skip(depth); err != nil {
			return t, "", err
		}
		return t, "ts must be Unix milliseconds or an RFC 3339 string", nil
	}
}

// intern returns b as a string, shared with earlier calls: metric names and
// device ids repeat in nearly every message.
func (d *decoder) intern(b []byte) string {
	if s, ok := d.interned[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(d.interned) >= maxInterned {
		clear(d.interned)
	}
	d.interned[s] = s
	return s
}

// validMetric reports whether b matches ^[a-z][a-z0-9_]{0,63}$.
func validMetric(b []byte) bool {
	if len(b) == 0 || len(b) > 64 || b[0] < 'a' || b[0] > 'z' {
		return false
	}
	for _, c := range b[1:] {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// --- JSON scanning -------------------------------------------------------

func (d *decoder) syntax(msg string) error {
	return &decodeError{ReasonMalformedJSON, fmt.Sprintf("%s (at byte %d)", msg, d.pos)}
}

func (d *decoder) ws() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek skips whitespace and returns the next byte, 0 at the end.
func (d *decoder) peek() byte {
	d.ws()
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

// object reads an object whose '{' is next; member reads each value.
func (d *decoder) object(depth int, member func(key []byte, escaped bool) error) error {
	if depth >= maxDepth {
		return d.syntax("nesting too deep")
	}
	d.pos++ // '{'
	if d.peek() == '}' {
		d.pos++
		return nil
	}
	for {
		if d.peek() != '"' {
			return d.syntax("expected a member name")
		}
		key, escaped, err := d.str()
		if err != nil {
			return err
		}
		if d.peek() != ':' {
			return d.syntax("expected ':'")
		}
		d.pos++
		d.ws()
		if err := member(key, escaped); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return nil
		default:
			return d.syntax("expected ',' or '}'")
		}
	}
}

// array reads an array whose '[' is next; elem reads each element.
func (d *decoder) array(depth int, elem func() error) error {
	if depth >= maxDepth {
		return d.syntax("nesting too deep")
	}
	d.pos++ // '['
	if d.peek() == ']' {
		d.pos++
		return nil
	}
	for {
		d.ws()
		if err := elem(); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return nil
		default:
			return d.syntax("expected ',' or ']'")
		}
	}
}

// skip reads and discards any value.
func (d *decoder) skip(depth int) error {
	switch c := d.peek(); {
	case c == '{':
		return d.object(depth, func([]byte, bool) error { return d.skip(depth + 1) })
	case c == '[':
		return d.array(depth, func() error { return d.skip(depth + 1) })
	case c == '"':
		_, _, err := d.str()
		return err
	case c == 't' || c == 'f' || c == 'n':
		return d.literal()
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := d.number()
		return err
	case c == 0:
		return d.syntax("unexpected end of input")
	default:
		return d.syntax(fmt.Sprintf("unexpected character %q", c))
	}
}

// literal reads true, false or null.
func (d *decoder) literal() error {
	rest := d.data[d.pos:]
	for _, w := range [...]string{"true", "false", "null"} {
		if len(rest) >= len(w) && string(rest[:len(w)]) == w {
			d.pos += len(w)
			return nil
		}
	}
	return d.syntax("invalid literal")
}

// number reads a number as JSON defines it and returns its text.
func (d *decoder) number() ([]byte, error) {
	start, p, b := d.pos, d.pos, d.data
	digits := func() int {
		n := 0
		for p < len(b) && b[p] >= '0' && b[p] <= '9' {
			p++
			n++
		}
		return n
	}
	if p < len(b) && b[p] == '-' {
		p++
	}
	switch {
	case p < len(b) && b[p] == '0':
		p++
	case p < len(b) && b[p] >= '1' && b[p] <= '9':
		digits()
	default:
		d.pos = p
		return nil, d.syntax("invalid number")
	}
	if p < len(b) && b[p] == '.' {
		p++
		if digits() == 0 {
			d.pos = p
			return nil, d.syntax("invalid number")
		}
	}
	if p < len(b) && (b[p] == 'e' || b[p] == 'E') {
		p++
		if p < len(b) && (b[p] == '+' || b[p] == '-') {
			p++
		}
		if digits() == 0 {
			d.pos = p
			return nil, d.syntax("invalid number")
		}
	}
	d.pos = p
	return b[start:p], nil
}

// str reads a string whose '"' is next and returns its raw content (escapes
// not yet resolved) and whether it has escapes. It rejects control
// characters, bad escapes and invalid UTF-8.
func (d *decoder) str() (raw []byte, escaped bool, err error) {
	b := d.data
	i := d.pos + 1
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			raw = b[d.pos+1 : i]
			d.pos = i + 1
			return raw, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				d.pos = i
				return nil, false, d.syntax("unterminated string")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex4(b[i+2:i+6]) {
					d.pos = i
					return nil, false, d.syntax("invalid \\u escape")
				}
				i += 6
			default:
				d.pos = i
				return nil, false, d.syntax("invalid escape")
			}
		case c < 0x20:
			d.pos = i
			return nil, false, d.syntax("control character in string")
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				d.pos = i
				return nil, false, d.syntax("invalid UTF-8")
			}
			i += size
		}
	}
	d.pos = i
	return nil, false, d.syntax("unterminated string")
}

func isHex4(b []byte) bool {
	for _, c := range b[:4] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func hexVal(c byte) rune {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0')
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10)
	default:
		return rune(c - 'A' + 10)
	}
}

// unescapeKey resolves the escapes of a string str already validated. The
// result is raw itself when there are none, else d.scratch (valid until the
// next call). Lone surrogates become U+FFFD, as in encoding/json.
func (d *decoder) unescapeKey(raw []byte, escaped bool) []byte {
	if !escaped {
		return raw
	}
	out := d.scratch[:0]
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch raw[i+1] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hexVal(raw[i+2])<<12 | hexVal(raw[i+3])<<8 | hexVal(raw[i+4])<<4 | hexVal(raw[i+5])
			i += 6
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					lo := hexVal(raw[i+2])<<12 | hexVal(raw[i+3])<<8 | hexVal(raw[i+4])<<4 | hexVal(raw[i+5])
					if dec := utf16.DecodeRune(r, lo); dec != utf8.RuneError {
						r2 = dec
						i += 6
					}
				}
				r = r2
			}
			out = utf8.AppendRune(out, r)
			continue
		default: // '"', '\\', '/'
			out = append(out, raw[i+1])
		}
		i += 2
	}
	d.scratch = out
	return out
}
