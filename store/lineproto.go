package store

import (
	"math"
	"strconv"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Tag is one tag of a point. Callers pass tags sorted by key: InfluxDB
// accepts any order but sorted input spares it a sort per point.
type Tag struct {
	Key, Value string
}

// AppendPoint appends one line protocol point (terminated by '\n') to buf
// and returns the extended buffer. Numbers are written as floats (a bare
// `12` is a float in line protocol), so a field never changes type between
// readings; booleans as true/false; the time in nanoseconds (a zero t
// leaves the time to the server). Values that are NaN or ±Inf, tags with an
// empty key or value, fields with an empty name and the key "time" (which
// InfluxDB rejects, failing the point) are skipped. A point left with no
// field, or with an empty measurement, is not emitted: buf comes back
// unchanged. Names are sanitised as Line describes.
//
// It allocates nothing beyond the growth of buf.
func AppendPoint(buf []byte, measurement string, tags []Tag, values []telemetry.Value, t time.Time) []byte {
	l := StartLine(buf, measurement)
	for i := range tags {
		l.Tag(tags[i].Key, tags[i].Value)
	}
	for i := range values {
		v := &values[i]
		if v.IsBool {
			l.Bool(v.Name, v.Bool)
		} else {
			l.Float(v.Name, v.Num)
		}
	}
	buf, _ = l.End(t)
	return buf
}

// Line builds one point at the end of a buffer, for writers whose points
// are not telemetry readings (alert events, for instance):
//
//	l := store.StartLine(buf, "alert_events")
//	l.Tag("device_id", id)
//	l.String("state", "firing")
//	l.Float("value", 3.5)
//	buf, ok := l.End(now)
//
// Tags must all come before the first field. Escaping follows the line
// protocol of InfluxDB 1.8 and 2.x: commas and spaces in the measurement,
// commas, equals signs and spaces in tag keys, tag values and field keys are
// backslash-escaped; string field values are quoted with " and \ escaped.
// Line protocol has no way to write some inputs, so they are replaced
// rather than left to break the whole batch: control characters (newlines
// above all, which would end the line) become spaces; a backslash that ends
// a name or comes before a comma, space, equals sign, control character or
// another backslash becomes '/' (InfluxDB would read it as escaping what
// follows); and a measurement starting with '#' (a comment line) starts
// with '_' instead. Other backslashes pass unchanged.
type Line struct {
	buf    []byte
	start  int // len(buf) before this line, to roll back an empty or bad point
	fields int
	bad    bool
}

// StartLine starts a point with the given measurement at the end of buf.
func StartLine(buf []byte, measurement string) Line {
	l := Line{buf: buf, start: len(buf)}
	if measurement == "" {
		l.bad = true
		return l
	}
	if measurement[0] == '#' {
		l.buf = append(l.buf, '_')
		measurement = measurement[1:]
	}
	l.buf = appendEscaped(l.buf, measurement, false)
	return l
}

// Tag adds a tag. A tag with an empty key or value is skipped (InfluxDB has
// no empty tags: absent is the same), and so is the key "time". A Tag after
// a field spoils the point: End then emits nothing and reports false.
func (l *Line) Tag(key, value string) {
	if l.fields > 0 {
		l.bad = true
		return
	}
	if key == "" || value == "" || key == "time" {
		return
	}
	l.buf = append(l.buf, ',')
	l.buf = appendEscaped(l.buf, key, true)
	l.buf = append(l.buf, '=')
	l.buf = appendEscaped(l.buf, value, true)
}

// fieldKey writes the separator and the key of the next field, or reports
// that the field must be skipped.
func (l *Line) fieldKey(key string) bool {
	if key == "" || key == "time" {
		return false
	}
	if l.fields == 0 {
		l.buf = append(l.buf, ' ')
	} else {
		l.buf = append(l.buf, ',')
	}
	l.fields++
	l.buf = appendEscaped(l.buf, key, true)
	l.buf = append(l.buf, '=')
	return true
}

// Float adds a float field; NaN and ±Inf are skipped (line protocol cannot
// carry them).
func (l *Line) Float(key string, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	if !l.fieldKey(key) {
		return
	}
	// Whole numbers (counts, most sensor readings) are written as integer
	// digits, which line protocol reads as the same float: formatting the
	// shortest decimal of a float is several times slower. Negative zero
	// keeps the general path and its sign.
	if v == math.Trunc(v) && math.Abs(v) < 1e15 && (v != 0 || !math.Signbit(v)) {
		l.buf = strconv.AppendInt(l.buf, int64(v), 10)
		return
	}
	l.buf = strconv.AppendFloat(l.buf, v, 'g', -1, 64)
}

// Bool adds a boolean field.
func (l *Line) Bool(key string, v bool) {
	if l.fieldKey(key) {
		l.buf = strconv.AppendBool(l.buf, v)
	}
}

// String adds a string field. Control characters become spaces.
func (l *Line) String(key, v string) {
	if !l.fieldKey(key) {
		return
	}
	l.buf = append(l.buf, '"')
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '"' || c == '\\':
			l.buf = append(l.buf, '\\', c)
		case c < 0x20 || c == 0x7f:
			l.buf = append(l.buf, ' ')
		default:
			l.buf = append(l.buf, c)
		}
	}
	l.buf = append(l.buf, '"')
}

// End finishes the point with its time (zero: the server's time) and a
// newline, and returns the buffer. When the point has no field, no
// measurement, or a tag after a field, the buffer is returned as it was
// before StartLine, with false.
func (l *Line) End(t time.Time) ([]byte, bool) {
	if l.bad || l.fields == 0 {
		return l.buf[:l.start], false
	}
	if !t.IsZero() {
		l.buf = append(l.buf, ' ')
		l.buf = strconv.AppendInt(l.buf, t.UnixNano(), 10)
	}
	l.buf = append(l.buf, '\n')
	return l.buf, true
}

// plainAfter reports whether s[i] exists and is an ordinary character, one
// that a backslash before it may precede unchanged.
func plainAfter(s string, i int) bool {
	return i < len(s) && !special[s[i]]
}

// special marks the bytes that are not ordinary (see plainAfter): a table,
// because every tag and field key of every point is scanned for them.
var special = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	for _, c := range []byte{',', ' ', '=', '\\', 0x7f} {
		t[c] = true
	}
	return t
}()

// appendEscaped appends a measurement (eq false) or a tag key, tag value or
// field key (eq true) with line protocol escapes.
func appendEscaped(buf []byte, s string, eq bool) []byte {
	// Fast path: most names need no escape, append them whole.
	i := 0
	for i < len(s) && !special[s[i]] {
		i++
	}
	buf = append(buf, s[:i]...)
	for ; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ',' || c == ' ' || (eq && c == '='):
			buf = append(buf, '\\', c)
		case c < 0x20 || c == 0x7f:
			buf = append(buf, '\\', ' ')
		case c == '\\' && !plainAfter(s, i+1):
			// InfluxDB reads a backslash as escaping whatever follows (in the
			// series key) or as a pair with the next backslash (in fields),
			// and keeps "\\" as two characters: a backslash before a special
			// character, another backslash, or the separator after the name
			// has no faithful encoding.
			buf = append(buf, '/')
		default:
			buf = append(buf, c)
		}
	}
	return buf
}
