package simulators

import (
	"bytes"
	"math"
	"sort"
	"strconv"
)

// The encoders below write the wire format by hand: a fleet of 10,000
// devices encodes 10,000 readings a second, and encoding/json's reflection
// over a map[string]any (sorting its keys on every call) was the largest
// cost of a reading.

// sortedNames returns a device's metric names in a fixed order, so that
// payloads are reproducible.
func sortedNames(metrics map[string]MetricSpec) []string {
	names := make([]string, 0, len(metrics))
	for n := range metrics {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// appendReading appends {"ts":<ms>,"values":{...}} with the values in the
// order of names; values missing from names are appended after them in
// sorted order (a model never returns any, but a fault might).
func appendReading(b []byte, tsMillis int64, values map[string]any, names []string) []byte {
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, tsMillis, 10)
	b = append(b, `,"values":{`...)
	first := true
	n := 0
	for _, name := range names {
		v, ok := values[name]
		if !ok {
			continue
		}
		n++
		b = appendValue(b, name, v, first)
		first = false
	}
	if n < len(values) {
		var extra []string
		for name := range values {
			if !contains(names, name) {
				extra = append(extra, name)
			}
		}
		sort.Strings(extra)
		for _, name := range extra {
			b = appendValue(b, name, values[name], first)
			first = false
		}
	}
	return append(b, "}}"...)
}

// appendName quotes a metric name or device id. Both are plain ASCII by
// rule, so most need no escaping; anything else goes through strconv.
func appendName(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return strconv.AppendQuote(b, s)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func contains(sorted []string, s string) bool {
	i := sort.SearchStrings(sorted, s)
	return i < len(sorted) && sorted[i] == s
}

func appendValue(b []byte, name string, v any, first bool) []byte {
	if !first {
		b = append(b, ',')
	}
	b = appendName(b, name)
	b = append(b, ':')
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return append(b, `"NaN"`...) // JSON has no NaN; field firmware sends this
		}
		return strconv.AppendFloat(b, x, 'f', -1, 64)
	case bool:
		return strconv.AppendBool(b, x)
	case int:
		return strconv.AppendInt(b, int64(x), 10)
	case string:
		return strconv.AppendQuote(b, x)
	default:
		return append(b, "null"...)
	}
}

// appendGateway appends a gateway message {"<id>":[reading,...],...} for rs,
// grouping each device's readings in their order, devices in order of first
// appearance. order is scratch space.
func appendGateway(b []byte, rs []gwReading, order map[string][]int) []byte {
	clear(order)
	var ids []string
	for i, r := range rs {
		if _, ok := order[r.id]; !ok {
			ids = append(ids, r.id)
		}
		order[r.id] = append(order[r.id], i)
	}
	b = append(b, '{')
	for k, id := range ids {
		if k > 0 {
			b = append(b, ',')
		}
		b = appendName(b, id)
		b = append(b, ":["...)
		for n, i := range order[id] {
			if n > 0 {
				b = append(b, ',')
			}
			b = append(b, rs[i].raw...)
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// Malformed forms, each with the ingest reason it should earn.
const (
	formTruncated = "truncated"  // malformed_json
	formBadJSON   = "bad_json"   // malformed_json
	formNaNString = "nan_string" // bad_value
	formBadMetric = "bad_metric" // bad_metric
)

var malformedForms = [...]struct{ form, reason string }{
	{formTruncated, "malformed_json"},
	{formBadJSON, "malformed_json"},
	{formNaNString, "bad_value"},
	{formBadMetric, "bad_metric"},
}

// malform breaks a telemetry payload (a reading, an array of them or a
// gateway message) in the given form. It returns a new slice.
func malform(p []byte, form string) []byte {
	switch form {
	case formTruncated:
		return append([]byte(nil), p[:len(p)/2]...)
	case formBadJSON:
		// A trailing comma before the closing brace, as a hand-rolled
		// firmware encoder writes it.
		out := append([]byte(nil), p[:len(p)-1]...)
		return append(append(out, ','), p[len(p)-1])
	case formNaNString, formBadMetric:
		// The first value of the first reading.
		i := bytes.Index(p, []byte(`"values":{"`))
		if i < 0 {
			return malform(p, formTruncated)
		}
		keyStart := i + len(`"values":{`)
		keyEnd := keyStart + 1 + bytes.IndexByte(p[keyStart+1:], '"') + 1 // after the closing quote
		if form == formBadMetric {
			// "flow_vph" -> "Flow-VPH!": capitals and punctuation break the rule.
			key := p[keyStart+1 : keyEnd-1]
			bad := append([]byte(`"`), bytes.ToUpper(key[:1])...)
			bad = append(bad, bytes.ReplaceAll(key[1:], []byte("_"), []byte("-"))...)
			bad = append(bad, `!"`...)
			return concat(p[:keyStart], bad, p[keyEnd:])
		}
		valStart := keyEnd + 1 // after the colon
		valEnd := valStart
		for valEnd < len(p) && p[valEnd] != ',' && p[valEnd] != '}' {
			valEnd++
		}
		return concat(p[:valStart], []byte(`"NaN"`), p[valEnd:])
	}
	return p
}

func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// oversizedLimit is ingest's payload limit; an oversized fault exceeds it.
const oversizedLimit = 64 << 10

// oversize builds a payload of more than target bytes (target > 64 KiB)
// from a valid one: a device message becomes an array repeating its
// reading, a gateway message repeats its members.
func oversize(p []byte, gateway bool, target int) []byte {
	out := make([]byte, 0, target+len(p)+2)
	if gateway {
		inner := p[1 : len(p)-1]
		out = append(out, '{')
		for len(out) <= target {
			if len(out) > 1 {
				out = append(out, ',')
			}
			out = append(out, inner...)
		}
		return append(out, '}')
	}
	out = append(out, '[')
	for len(out) <= target {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, p...)
	}
	return append(out, ']')
}
