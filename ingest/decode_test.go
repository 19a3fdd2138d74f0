package ingest

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

var (
	testNow    = time.Date(2025, 11, 26, 2, 0, 0, 0, time.UTC) // 1764122400000 ms
	testLimits = decodeLimits{maxPayload: 64 << 10, maxReadings: 1000, maxAge: 7 * 24 * time.Hour, maxFuture: 5 * time.Minute}
)

// got is a decoded payload in a comparable form.
type gotReading struct {
	ts     time.Time
	values map[string]any // float64 or bool
	reason string
}

func decodeForTest(t *testing.T, payload string, gateway bool) (map[string][]gotReading, map[string]string, error) {
	t.Helper()
	d := newDecoder(testLimits)
	err := d.decode([]byte(payload), gateway, testNow)
	if err != nil {
		return nil, nil, err
	}
	out := map[string][]gotReading{}
	groupReasons := map[string]string{}
	for _, g := range d.groups {
		if g.reason != "" {
			groupReasons[g.id] = g.reason
		}
		for _, r := range d.readings[g.rStart:g.rEnd] {
			gr := gotReading{ts: r.ts, reason: r.reason, values: map[string]any{}}
			for _, v := range d.values[r.vStart:r.vEnd] {
				if v.IsBool {
					gr.values[v.Name] = v.Bool
				} else {
					gr.values[v.Name] = v.Num
				}
			}
			out[g.id] = append(out[g.id], gr)
		}
	}
	return out, groupReasons, nil
}

func TestDecodeValid(t *testing.T) {
	ms := testNow.Add(-time.Minute)
	tests := []struct {
		name    string
		payload string
		want    []gotReading
	}{
		{"one reading, ms", `{"ts": 1764122340000, "values": {"flow_vph": 1260, "speed_kmh": 54.5}}`,
			[]gotReading{{ts: ms, values: map[string]any{"flow_vph": 1260.0, "speed_kmh": 54.5}}}},
		{"rfc3339", `{"ts":"2025-11-26T01:59:00Z","values":{"a":1}}`,
			[]gotReading{{ts: ms, values: map[string]any{"a": 1.0}}}},
		{"rfc3339 with offset and fraction", `{"ts":"2025-11-26T02:59:00.5+01:00","values":{"a":1}}`,
			[]gotReading{{ts: ms.Add(500 * time.Millisecond), values: map[string]any{"a": 1.0}}}},
		{"fractional ms", `{"ts":1764122340000.5,"values":{"a":1}}`,
			[]gotReading{{ts: ms.Add(500 * time.Microsecond), values: map[string]any{"a": 1.0}}}},
		{"no ts means arrival", `{"values":{"a":true,"b":false}}`,
			[]gotReading{{ts: testNow, values: map[string]any{"a": true, "b": false}}}},
		{"array", `[{"ts":1764122340000,"values":{"a":1}}, {"values":{"a":-2.5e3}}]`,
			[]gotReading{{ts: ms, values: map[string]any{"a": 1.0}}, {ts: testNow, values: map[string]any{"a": -2500.0}}}},
		{"unknown members ignored", `{"seq": [1, {"x": null}], "values": {"a": 0}, "meta": "x"}`,
			[]gotReading{{ts: testNow, values: map[string]any{"a": 0.0}}}},
		{"escaped names", `{"t\u0073":1764122340000,"values":{"\u0061_1":1}}`,
			[]gotReading{{ts: ms, values: map[string]any{"a_1": 1.0}}}},
		{"whitespace", " \n\t{ \"values\" : { \"a\" : 1 } } \r\n",
			[]gotReading{{ts: testNow, values: map[string]any{"a": 1.0}}}},
		{"64-char metric", `{"values":{"` + "a" + strings.Repeat("b", 63) + `":1}}`,
			[]gotReading{{ts: testNow, values: map[string]any{"a" + strings.Repeat("b", 63): 1.0}}}},
		{"tiny number", `{"values":{"a":1e-400}}`,
			[]gotReading{{ts: testNow, values: map[string]any{"a": 0.0}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := decodeForTest(t, tt.payload, false)
			require.NoError(t, err)
			require.Len(t, got[""], len(tt.want))
			for i, w := range tt.want {
				g := got[""][i]
				assert.Empty(t, g.reason)
				assert.True(t, w.ts.Equal(g.ts), "ts %v, want %v", g.ts, w.ts)
				assert.Equal(t, w.values, g.values)
			}
		})
	}
}

func TestDecodeGateway(t *testing.T) {
	got, groupReasons, err := decodeForTest(t, `{"tc-1": [{"values":{"a":1}}, {"values":{"a":2}}], "tc-2": {"values":{"b":true}}, "bad id!": [{"values":{"a":1}}], "tc-3": []}`, true)
	require.NoError(t, err)
	assert.Len(t, got["tc-1"], 2)
	assert.Len(t, got["tc-2"], 1)
	assert.Len(t, got["bad id!"], 1)
	assert.Equal(t, map[string]string{"bad id!": ReasonUnknownDevice}, groupReasons)
}

func TestDecodeRejectsPayload(t *testing.T) {
	deep := strings.Repeat(`{"x":`, 40) + "1" + strings.Repeat("}", 40)
	many := "[" + strings.TrimSuffix(strings.Repeat(`{"values":{"a":1}},`, 1001), ",") + "]"
	tests := []struct {
		name, payload string
		gateway       bool
		reason        string
	}{
		{"empty", ``, false, ReasonMalformedJSON},
		{"not json", `flow=12`, false, ReasonMalformedJSON},
		{"truncated", `{"values":{"a":1}`, false, ReasonMalformedJSON},
		{"trailing comma", `{"values":{"a":1,}}`, false, ReasonMalformedJSON},
		{"trailing data", `{"values":{"a":1}} x`, false, ReasonMalformedJSON},
		{"two documents", `{"values":{"a":1}}{"values":{"a":1}}`, false, ReasonMalformedJSON},
		{"leading zero", `{"values":{"a":01}}`, false, ReasonMalformedJSON},
		{"NaN literal", `{"values":{"a":NaN}}`, false, ReasonMalformedJSON},
		{"single quotes", `{'values':{'a':1}}`, false, ReasonMalformedJSON},
		{"invalid utf8", "{\"values\":{\"a\":1},\"x\":\"\xff\"}", false, ReasonMalformedJSON},
		{"control char in string", "{\"x\":\"a\nb\",\"values\":{\"a\":1}}", false, ReasonMalformedJSON},
		{"bad escape", `{"x":"\q","values":{"a":1}}`, false, ReasonMalformedJSON},
		{"too deep", `{"values":{"a":1},"x":` + deep + `}`, false, ReasonMalformedJSON},
		{"number at top", `42`, false, ReasonMalformedJSON},
		{"array of numbers", `[1,2]`, false, ReasonMalformedJSON},
		{"gateway array", `[{"values":{"a":1}}]`, true, ReasonMalformedJSON},
		{"gateway member not readings", `{"tc-1": 5}`, true, ReasonMalformedJSON},
		{"no readings", `[]`, false, ReasonBadValue},
		{"gateway no readings", `{}`, true, ReasonBadValue},
		{"too many readings", many, false, ReasonTooLarge},
		{"too many bytes", `{"values":{"a":1},"pad":"` + strings.Repeat("x", 64<<10) + `"}`, false, ReasonTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := decodeForTest(t, tt.payload, tt.gateway)
			require.Error(t, err)
			var de *decodeError
			require.ErrorAs(t, err, &de)
			assert.Equal(t, tt.reason, de.reason, "%v", err)
		})
	}
}

func TestDecodeRejectsReading(t *testing.T) {
	tests := []struct {
		name, reading, reason string
	}{
		{"string value", `{"values":{"a":"12"}}`, ReasonBadValue},
		{"null value", `{"values":{"a":null}}`, ReasonBadValue},
		{"object value", `{"values":{"a":{"b":1}}}`, ReasonBadValue},
		{"array value", `{"values":{"a":[1]}}`, ReasonBadValue},
		{"overflow", `{"values":{"a":1e400}}`, ReasonBadValue},
		{"no values", `{"ts":1764122340000}`, ReasonBadValue},
		{"empty values", `{"values":{}}`, ReasonBadValue},
		{"values not object", `{"values":[1]}`, ReasonBadValue},
		{"upper case metric", `{"values":{"Flow":1}}`, ReasonBadMetric},
		{"metric starts with digit", `{"values":{"1a":1}}`, ReasonBadMetric},
		{"metric with dash", `{"values":{"a-b":1}}`, ReasonBadMetric},
		{"empty metric", `{"values":{"":1}}`, ReasonBadMetric},
		{"65-char metric", `{"values":{"a` + strings.Repeat("b", 64) + `":1}}`, ReasonBadMetric},
		{"repeated metric", `{"values":{"a":1,"b":2,"a":3}}`, ReasonBadMetric},
		{"repeated metric, in order", `{"values":{"a":1,"a":2,"b":3}}`, ReasonBadMetric},
		{"repeated metric, last", `{"values":{"a":1,"b":2,"b":3}}`, ReasonBadMetric},
		{"too old", `{"ts":1763517599999,"values":{"a":1}}`, ReasonBadTimestamp},
		{"seconds, not ms", `{"ts":1764122340,"values":{"a":1}}`, ReasonBadTimestamp},
		{"too far ahead", `{"ts":1764122700001,"values":{"a":1}}`, ReasonBadTimestamp},
		{"centuries ahead (found by fuzzing)", `{"ts":"2700-01-01T00:00:00Z","values":{"a":1}}`, ReasonBadTimestamp},
		{"centuries ago", `{"ts":"1600-01-01T00:00:00Z","values":{"a":1}}`, ReasonBadTimestamp},
		{"negative", `{"ts":-1,"values":{"a":1}}`, ReasonBadTimestamp},
		{"huge", `{"ts":1e300,"values":{"a":1}}`, ReasonBadTimestamp},
		{"not rfc3339", `{"ts":"26/11/2025 02:00","values":{"a":1}}`, ReasonBadTimestamp},
		{"null ts", `{"ts":null,"values":{"a":1}}`, ReasonBadTimestamp},
		{"bool ts", `{"ts":true,"values":{"a":1}}`, ReasonBadTimestamp},
		{"ts twice", `{"ts":1764122340000,"ts":1764122340000,"values":{"a":1}}`, ReasonBadTimestamp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A bad reading beside a good one: the good one stays.
			got, _, err := decodeForTest(t, "["+tt.reading+`,{"values":{"ok":1}}]`, false)
			require.NoError(t, err)
			require.Len(t, got[""], 2)
			assert.Equal(t, tt.reason, got[""][0].reason)
			assert.Empty(t, got[""][1].reason)
		})
	}
}

func TestDecodeLimitsAtTheEdge(t *testing.T) {
	// Exactly MaxReadings readings and exactly MaxAge/MaxFuture are fine.
	many := "[" + strings.TrimSuffix(strings.Repeat(`{"values":{"a":1}},`, 1000), ",") + "]"
	got, _, err := decodeForTest(t, many, false)
	require.NoError(t, err)
	assert.Len(t, got[""], 1000)
	got, _, err = decodeForTest(t, `[{"ts":1763517600000,"values":{"a":1}},{"ts":1764122700000,"values":{"a":1}}]`, false)
	require.NoError(t, err)
	assert.Empty(t, got[""][0].reason)
	assert.Empty(t, got[""][1].reason)
}

func TestDecodeReusesBuffers(t *testing.T) {
	d := newDecoder(testLimits)
	p := []byte(`[{"ts":1764122340000,"values":{"flow_vph":1260,"speed_kmh":54.5,"ok":true}},{"values":{"flow_vph":1}}]`)
	require.NoError(t, d.decode(p, false, testNow))
	allocs := testing.AllocsPerRun(100, func() {
		if err := d.decode(p, false, testNow); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs, "decoding a valid payload should not allocate once warm")
}

// FuzzDecode checks that any input is handled without panic, that invalid
// JSON or UTF-8 is always malformed_json (or too_large), and that accepted
// readings hold only valid names and finite values.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"ts": 1764122340000, "values": {"flow_vph": 1260, "speed_kmh": 54.5}}`,
		`[{"ts":"2025-11-26T01:59:00Z","values":{"a":true}},{"values":{"B":1}}]`,
		`{"tc-1": [{"values":{"a":1}}], "tc-2": {"values":{"b":false}}}`,
		`{"values":{"a":"x","b":null,"c":[1,{"d":2}]},"e":"\u00e9\ud83d\ude00"}`,
		`{"t\u0073":1.5e12,"values":{"\u0061":-0.0e-0}}`,
		"{\"values\":{\"a\":1},\"x\":\"\xff\"}",
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
		``, `[]`, `{}`, `"x"`, `nul`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	d := newDecoder(decodeLimits{maxPayload: 4096, maxReadings: 50, maxAge: testLimits.maxAge, maxFuture: testLimits.maxFuture})
	f.Fuzz(func(t *testing.T, payload []byte, gateway bool) {
		err := d.decode(payload, gateway, testNow)
		valid := json.Valid(payload) && utf8.Valid(payload)
		if err != nil {
			var de *decodeError
			if !errorsAs(err, &de) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if !valid && de.reason != ReasonMalformedJSON && de.reason != ReasonTooLarge {
				t.Fatalf("invalid input rejected as %s: %v", de.reason, err)
			}
			return
		}
		if !valid {
			t.Fatalf("invalid JSON accepted: %q", payload)
		}
		if len(d.readings) == 0 || len(d.readings) > 50 {
			t.Fatalf("%d readings", len(d.readings))
		}
		for _, r := range d.readings {
			if r.reason != "" {
				continue
			}
			if r.ts.Before(testNow.Add(-testLimits.maxAge)) || r.ts.After(testNow.Add(testLimits.maxFuture)) {
				t.Fatalf("accepted ts %v", r.ts)
			}
			for _, v := range d.values[r.vStart:r.vEnd] {
				if !validMetric([]byte(v.Name)) {
					t.Fatalf("accepted metric %q", v.Name)
				}
				if !v.IsBool && (math.IsNaN(v.Num) || math.IsInf(v.Num, 0)) {
					t.Fatalf("accepted value %v", v.Num)
				}
			}
		}
	})
}

func errorsAs(err error, de **decodeError) bool {
	e, ok := err.(*decodeError)
	*de = e
	return ok
}

// BenchmarkDecodeAndEncode measures the hot path of one message: decode a
// three-reading payload and encode its points as line protocol.
func BenchmarkDecodeAndEncode(b *testing.B) {
	p := []byte(`[{"ts":1764122340000,"values":{"flow_vph":1260,"speed_kmh":54.5,"occupancy_pct":12.25}},` +
		`{"ts":1764122341000,"values":{"flow_vph":1262,"speed_kmh":54.1,"occupancy_pct":12.5}},` +
		`{"ts":1764122342000,"values":{"flow_vph":1270,"speed_kmh":53.9,"occupancy_pct":12.75,"congested":false}}]`)
	d := newDecoder(testLimits)
	tags := []store.Tag{{Key: "device_id", Value: "tc-0001"}, {Key: "domain", Value: "roads"}, {Key: "site", Value: "a12-km34"}}
	var buf []byte
	var readings []telemetry.Reading
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.decode(p, false, testNow); err != nil {
			b.Fatal(err)
		}
		buf, readings = buf[:0], readings[:0]
		for _, r := range d.readings {
			vals := d.values[r.vStart:r.vEnd]
			readings = append(readings, telemetry.Reading{DeviceID: "tc-0001", Time: r.ts, Values: vals})
			buf = store.AppendPoint(buf, "traffic_counter", tags, vals, r.ts)
		}
	}
}

func TestParseMillisMatchesParseInt(t *testing.T) {
	for _, s := range []string{"", "0", "7", "1764122340000", "000123", "-1", "1e3", "12.5", "999999999999999999",
		"9223372036854775807", "9223372036854775808", "99999999999999999999", "12a", " 1"} {
		want, werr := strconv.ParseInt(s, 10, 64)
		got, err := parseMillis([]byte(s))
		assert.Equal(t, want, got, "%q", s)
		assert.Equal(t, werr == nil, err == nil, "%q: %v vs %v", s, err, werr)
	}
}

// TestParseNumberMatchesParseFloat: the fast path gives ParseFloat's exact
// bits (and its errors) on plain decimals, edge cases and random inputs.
func TestParseNumberMatchesParseFloat(t *testing.T) {
	cases := []string{"0", "-0", "0.0", "-0.0", "1", "54.5", "0.125", "-12.75", "1260", "999999999999999",
		"9999999999999999", "0.000000000000001", "0.1", "0.3", "123456789.012345", "1234567890.123456",
		"1e3", "-2.5e3", "1.", ".5", "-", "", "1.2.3", "--1", "1-", "00.5", "12345678901234567890"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		intDigits, fracDigits := rng.IntN(10), rng.IntN(10)
		var b []byte
		if rng.IntN(2) == 0 {
			b = append(b, '-')
		}
		if rng.IntN(4) == 0 {
			b = append(b, '0') // 0.xxx, the commonest shape below one
			intDigits = 0
		} else {
			b = append(b, byte('1'+rng.IntN(9)))
		}
		for range intDigits {
			b = append(b, byte('0'+rng.IntN(10)))
		}
		if fracDigits > 0 {
			b = append(b, '.')
			for range fracDigits {
				b = append(b, byte('0'+rng.IntN(10)))
			}
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		want, werr := strconv.ParseFloat(s, 64)
		got, err := parseNumber([]byte(s))
		if math.Float64bits(want) != math.Float64bits(got) || (werr == nil) != (err == nil) {
			t.Fatalf("%q: got %v (%v), ParseFloat %v (%v)", s, got, err, want, werr)
		}
	}
}

// FuzzParseNumber: on any input, the fast path gives ParseFloat's bits and
// fails exactly when it fails.
func FuzzParseNumber(f *testing.F) {
	for _, s := range []string{"0", "-0.5", "54.5", "0.125", "999999999999999", "1.", ".5", "1e3", "00.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, werr := strconv.ParseFloat(s, 64)
		got, err := parseNumber([]byte(s))
		if (werr == nil) != (err == nil) || (werr == nil && math.Float64bits(want) != math.Float64bits(got)) {
			t.Fatalf("%q: got %v (%v), ParseFloat %v (%v)", s, got, err, want, werr)
		}
	})
}
