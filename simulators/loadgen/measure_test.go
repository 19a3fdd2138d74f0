package loadgen

import (
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseStatCPU(t *testing.T) {
	// Field 2 may hold spaces and parentheses.
	line := "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0"
	d, err := parseStatCPU(line)
	require.NoError(t, err)
	assert.Equal(t, 3*time.Second, d) // (250+50) ticks at 100 Hz

	_, err = parseStatCPU("garbage")
	assert.Error(t, err)
	_, err = parseStatCPU("1 (x) S 1 2")
	assert.Error(t, err)
}

func TestOwnProcess(t *testing.T) {
	cpu, err := procCPU(os.Getpid())
	require.NoError(t, err)
	assert.GreaterOrEqual(t, cpu, time.Duration(0))
	rss, peak, err := procMemory(os.Getpid())
	require.NoError(t, err)
	assert.Positive(t, rss)
	assert.GreaterOrEqual(t, peak, rss)
	assert.Positive(t, selfCPU())
}

func TestParseStatusMemory(t *testing.T) {
	rss, peak := parseStatusMemory("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads: 3\n")
	assert.Equal(t, int64(1024*1024), rss)
	assert.Equal(t, int64(2048*1024), peak)
}

const sampleMetrics = `# HELP infrawatch_ingest_readings_received_total Readings decoded.
# TYPE infrawatch_ingest_readings_received_total counter
infrawatch_ingest_readings_received_total 1000
infrawatch_ingest_readings_stored_total 990
infrawatch_ingest_readings_rejected_total{reason="bad_value"} 4
infrawatch_ingest_readings_rejected_total{reason="rate_limited"} 6
infrawatch_ingest_dropped_total{reason="write_rejected"} 0
infrawatch_ingest_lag_seconds_bucket{le="0.01"} 100
infrawatch_ingest_lag_seconds_bucket{le="0.1"} 900
infrawatch_ingest_lag_seconds_bucket{le="1"} 990
infrawatch_ingest_lag_seconds_bucket{le="+Inf"} 990
infrawatch_ingest_lag_seconds_sum 50
infrawatch_ingest_lag_seconds_count 990
go_goroutines 12
go_gc_heap_live_bytes 1.2345e+06
go_memstats_next_gc_bytes 4e+06
`

func TestParseMetrics(t *testing.T) {
	s, err := parseMetrics(strings.NewReader(sampleMetrics))
	require.NoError(t, err)
	assert.Equal(t, 1000.0, s.received)
	assert.Equal(t, 990.0, s.stored)
	assert.Equal(t, 10.0, s.rejected)
	assert.Equal(t, 0.0, s.dropped)
	require.Len(t, s.lag.bounds, 4)
	assert.True(t, math.IsInf(s.lag.bounds[3], 1))
	assert.Equal(t, []float64{100, 900, 990, 990}, s.lag.counts)
	assert.Equal(t, 1.2345e6, s.liveHeap, "go_gc_* lines are read too")
	assert.Equal(t, 4e6, s.nextGC)

	_, err = parseMetrics(strings.NewReader("infrawatch_ingest_readings_stored_total abc\n"))
	assert.Error(t, err)
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	h := histogram{bounds: []float64{0.01, 0.1, 1, inf}, counts: []float64{100, 900, 1000, 1000}}
	tests := []struct {
		q, want float64
	}{
		{0.05, 0.005},   // half of the first bucket, which starts at 0
		{0.5, 0.055},    // 400 of the 800 in (0.01, 0.1]
		{0.95, 0.55},    // 50 of the 100 in (0.1, 1]
		{1, 1},          // the top of the last finite bucket
		{0.1, 0.01},     // exactly the first bound
		{0.9, 0.1},      // exactly the second bound
		{0.999, 0.991},  // 99 of the 100 in (0.1, 1]
		{0.0001, 1e-05}, // 0.1 of the 100 in (0, 0.01]
	}
	for _, tc := range tests {
		assert.InDelta(t, tc.want, h.quantile(tc.q), 1e-9, "q=%g", tc.q)
	}
	// Everything in +Inf: the largest finite bound.
	over := histogram{bounds: []float64{1, inf}, counts: []float64{0, 5}}
	assert.Equal(t, 1.0, over.quantile(0.5))
	assert.True(t, math.IsNaN(histogram{}.quantile(0.5)))
	assert.True(t, math.IsNaN(histogram{bounds: []float64{1, inf}, counts: []float64{0, 0}}.quantile(0.5)))

	later := histogram{bounds: h.bounds, counts: []float64{150, 1000, 1200, 1200}}
	d := later.sub(h)
	assert.Equal(t, []float64{50, 100, 200, 200}, d.counts)
	assert.Equal(t, 1.0, d.maxBound())
	assert.Equal(t, 0.01, histogram{bounds: h.bounds, counts: []float64{3, 3, 3, 3}}.maxBound())
}

func TestParseFluxCount(t *testing.T) {
	ans := "#datatype,string,long,long\n#group,false,false,false\n#default,_result,,\n,result,table,_value\n,,0,12345\n\n"
	n, err := parseFluxCount(ans)
	require.NoError(t, err)
	assert.Equal(t, int64(12345), n)

	two := ",result,table,_value\n,,0,10\n\n,result,table,_value\n,,1,5\n"
	n, err = parseFluxCount(two)
	require.NoError(t, err)
	assert.Equal(t, int64(15), n)

	n, err = parseFluxCount("")
	require.NoError(t, err)
	assert.Zero(t, n, "no table: nothing stored")

	_, err = parseFluxCount(",error,reference\n,bad query,\n")
	assert.Error(t, err)
}

func TestReading(t *testing.T) {
	c := &conn{}
	now := time.UnixMilli(1764121200123)
	var sizes []int
	prev := int64(0)
	for i := range int64(2000) {
		b, ts := c.reading(now, i) // same clock: ts must still be unique
		sizes = append(sizes, len(b))
		var r struct {
			TS     int64              `json:"ts"`
			Values map[string]float64 `json:"values"`
		}
		require.NoError(t, json.Unmarshal(b, &r), string(b))
		require.Len(t, r.Values, 3)
		require.Contains(t, r.Values, countField)
		require.Greater(t, r.TS, prev)
		require.Equal(t, ts, r.TS)
		prev = r.TS
	}
	for _, n := range sizes {
		assert.InDelta(t, 148, n, 10, "payload size")
	}
}

// TestBenchRulesSelectBenchDevices: every rule a bench run creates selects
// the bench's devices and watches a metric they send, so that the figures
// include alert evaluation; and none fires on the values they send (the
// threshold stays above every value, the rate above every change between
// readings a millisecond apart, the most a bench connection sends).
func TestBenchRulesSelectBenchDevices(t *testing.T) {
	d := benchDevice("bench-0", 1)
	b, _ := (&conn{}).reading(time.Now(), 0)
	var r struct {
		Values map[string]float64 `json:"values"`
	}
	require.NoError(t, json.Unmarshal(b, &r))
	for _, rule := range benchRules() {
		sel := rule["selector"].(map[string]any)
		assert.Equal(t, d.Type, sel["type"], rule["id"])
		assert.Equal(t, d.Site, sel["site"], rule["id"])
		if m, ok := rule["metric"]; ok {
			assert.Contains(t, r.Values, m, rule["id"])
		}
	}
	rules := map[string]map[string]any{}
	for _, rule := range benchRules() {
		rules[rule["id"].(string)] = rule
	}
	high, jump := rules["bench-flow-high"], rules["bench-speed-jump"]
	require.Equal(t, ">", high["op"])
	threshold := toFloat(t, high["value"])
	maxRate := toFloat(t, jump["value"]) // per second
	var prevSpeed float64
	for seq := range int64(1000) {
		b, _ := (&conn{}).reading(time.Now(), seq)
		require.NoError(t, json.Unmarshal(b, &r))
		require.LessOrEqual(t, r.Values[high["metric"].(string)], threshold, "bench-flow-high stays quiet")
		speed := r.Values[jump["metric"].(string)]
		if seq > 0 {
			require.Less(t, math.Abs(speed-prevSpeed)/1e-3, maxRate, "bench-speed-jump stays quiet")
		}
		prevSpeed = speed
	}
}

func TestValidate(t *testing.T) {
	good := Options{APIURL: "http://127.0.0.1:8080", Token: "t", BrokerURL: "tcp://127.0.0.1:1883",
		InfluxURL: "http://127.0.0.1:8086"}.withDefaults()
	require.NoError(t, good.Validate())

	bad := good
	bad.APIURL, bad.BrokerURL, bad.Token, bad.Devices, bad.Rate, bad.QoS, bad.RunID, bad.Duration =
		"x", "http://b", "", MaxDevices+1, -1, 2, "UPPER", time.Millisecond
	err := bad.Validate()
	require.Error(t, err)
	for _, field := range []string{"api_url", "broker_url", "token", "devices", "rate", "qos", "run_id", "duration"} {
		assert.Contains(t, err.Error(), field+":")
	}
}

func TestJudge(t *testing.T) {
	ok := Result{OfferedRate: 1000, Sent: 10000, Acknowledged: 10000, Stored: 10000, SendRate: 1000, StoredRate: 980}
	tests := []struct {
		name   string
		change func(*Result)
		pass   bool
	}{
		{"all stored", func(*Result) {}, true},
		{"loss", func(r *Result) { r.Stored = 9999; r.Lost = 1 }, false},
		{"rejected", func(r *Result) { r.Rejected = 1 }, false},
		{"publish errors", func(r *Result) { r.PublishErrors = 1 }, false},
		{"slow store", func(r *Result) { r.StoredRate = 940; r.DrainS = 2.5 }, false},
		{"slow store from a flush interval", func(r *Result) { r.StoredRate = 920; r.DrainS = 1 }, true},
		{"slow send", func(r *Result) { r.SendRate = 900 }, false},
		{"within 5%", func(r *Result) { r.StoredRate = 951 }, true},
	}
	for _, tc := range tests {
		r := ok
		tc.change(&r)
		st := judge(&r, 0.05, 2*time.Second)
		assert.Equal(t, tc.pass, st.Pass, tc.name)
		if !tc.pass {
			assert.NotEmpty(t, st.Reason, tc.name)
		}
	}
}

func TestParseMetricsWrites(t *testing.T) {
	s, err := parseMetrics(strings.NewReader(`infrawatch_ingest_batch_size_sum 5000
infrawatch_ingest_batch_size_count 10
infrawatch_ingest_write_duration_seconds_sum 0.25
infrawatch_ingest_write_duration_seconds_count 10
`))
	require.NoError(t, err)
	assert.Equal(t, 5000.0, s.batchSum)
	assert.Equal(t, 10.0, s.batchCount)
	assert.Equal(t, 0.25, s.writeSum)
	assert.Equal(t, 10.0, s.writeCount)
}

func TestParseMachineBusy(t *testing.T) {
	d, err := parseMachineBusy("cpu  100 20 30 5000 40 5 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
	require.NoError(t, err)
	assert.Equal(t, 1600*time.Millisecond, d) // 100+20+30+5+5 ticks
	_, err = parseMachineBusy("intr 1 2 3")
	assert.Error(t, err)
	_, err = machineBusy()
	assert.NoError(t, err)
}

// toFloat reads a rule's number, written as an int or a float.
func toFloat(t *testing.T, v any) float64 {
	t.Helper()
	switch n := v.(type) {
	case int:
		return float64(n)
	case float64:
		return n
	}
	t.Fatalf("not a number: %#v", v)
	return 0
}
