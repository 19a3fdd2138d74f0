package loadgen

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

func TestLatHistQuantiles(t *testing.T) {
	var h latHist
	assert.Equal(t, -1.0, h.quantile(0.5))
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond / 10) // 0.1 .. 100 ms
	}
	assert.InDelta(t, 50, h.quantile(0.5), 1.5, "2% buckets")
	assert.InDelta(t, 99, h.quantile(0.99), 2.5)
	assert.Equal(t, 100.0, h.quantile(1), "capped at the max seen")
	var m latHist
	m.merge(&h)
	m.merge(&h)
	assert.Equal(t, int64(2000), m.total())
	assert.InDelta(t, 50, m.quantile(0.5), 1.5)
}

func TestParseReadingMsg(t *testing.T) {
	id, ts, ok := parseReadingMsg([]byte(`{"type":"reading","seq":7,"device_id":"bench-ab-3","ts":"2026-01-02T03:04:05.678Z","values":{"x":1}}`))
	require.True(t, ok)
	assert.Equal(t, "bench-ab-3", id)
	assert.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC).UnixMilli(), ts)
	for _, bad := range []string{`{"type":"reading"}`, `{"type":"reading","device_id":"x","ts":"nope"}`, `{"device_id":"x`} {
		_, _, ok := parseReadingMsg([]byte(bad))
		assert.False(t, ok, bad)
	}
}

func TestSentTimes(t *testing.T) {
	var s sentTimes
	at := time.Unix(100, 5)
	s.record(1234, at)
	got, ok := s.lookup(1234)
	require.True(t, ok)
	assert.Equal(t, at.UnixNano(), got)
	_, ok = s.lookup(1234 + sentRing) // same slot, another reading
	assert.False(t, ok)
}

func TestParseInfluxVars(t *testing.T) {
	w, err := parseInfluxVars(strings.NewReader(`{"system":{"currentTime":"x"},
"httpd::127.0.0.1:8086":{"name":"httpd","tags":{"bind":"127.0.0.1:8086"},"values":{"writeReq":4,"pointsWrittenOK":20000,"writeReqDurationNs":8000000}},
"write":{"name":"write","values":{"pointReq":20000}}}`))
	require.NoError(t, err)
	assert.Equal(t, influxWrites{requests: 4, points: 20000, durationNs: 8e6}, w)
	_, err = parseInfluxVars(strings.NewReader(`{"write":{"name":"write"}}`))
	assert.Error(t, err)
}

func TestComparisonTable(t *testing.T) {
	mk := func(stored float64, procs map[string]ProcUsage) *Result {
		return &Result{OfferedRate: 5000, SendRate: 5000, StoredRate: stored, Sent: 100, Acknowledged: 100, Stored: 100,
			Procs: procs, Cores: 2, PayloadSize: 148}
	}
	c := Comparison{Systems: []SystemRun{
		{Mode: ModeEmbedded, Run: mk(5000, map[string]ProcUsage{"infrawatch": {CPUPer1000: 0.01}, "influxd": {CPUPer1000: 0.02}})},
		{Mode: ModeTelegraf, Run: mk(4000, map[string]ProcUsage{"telegraf": {CPUPer1000: 0.015}, "mosquitto": {CPUPer1000: 0.005}, "influxd": {CPUPer1000: 0.02}})},
		{Mode: ModeMosquitto, Run: mk(5000, map[string]ProcUsage{"infrawatch": {CPUPer1000: 0.006}, "mosquitto": {CPUPer1000: 0.005}})},
	}}
	var b bytes.Buffer
	require.NoError(t, c.WriteTable(&b))
	out := b.String()
	t.Log("\n" + out)
	assert.Contains(t, out, "stored/s at the same offered rate: 1.25")
	assert.Contains(t, out, "CPU per stored reading at 5000/s: 0.50 (0.0100 vs 0.0200 s/1k); vs Telegraf alone 0.67")
	assert.Contains(t, out, "ratio infrawatch process / Telegraf process, both behind Mosquitto, CPU per stored reading: 0.40 (0.0060 vs 0.0150 s/1k)")
	assert.Contains(t, out, "Telegraf + Mosquitto")

	c.Systems = c.Systems[:2] // embedded and Telegraf
	c.Systems[0].Run, c.Systems[1].Run = nil, nil
	step := func(rate float64, pass bool, procs map[string]ProcUsage) Step {
		r := mk(rate, procs)
		r.OfferedRate = rate
		return Step{Result: *r, Pass: pass}
	}
	c.Systems[0].Ramp = &RampResult{Best: 20000, Steps: []Step{
		step(10000, true, map[string]ProcUsage{"infrawatch": {CPUPer1000: 0.03}}),
		step(20000, true, map[string]ProcUsage{"infrawatch": {CPUPer1000: 0.01}})}}
	c.Systems[1].Ramp = &RampResult{Best: 10000, Steps: []Step{
		step(10000, true, map[string]ProcUsage{"telegraf": {CPUPer1000: 0.06}}),
		step(20000, false, map[string]ProcUsage{"telegraf": {CPUPer1000: 0.01}})}}
	b.Reset()
	require.NoError(t, c.WriteTable(&b))
	t.Log("\n" + b.String())
	assert.Contains(t, b.String(), "highest zero-loss rate: 2.00 (20000 vs 10000 readings/s)")
	assert.Contains(t, b.String(), "CPU per stored reading at 10000/s: 0.50 (0.0300 vs 0.0600 s/1k)", "compared at the rate both passed")
}

// TestTelegrafSystem runs the reference pipeline: Mosquitto → Telegraf →
// influxd, and counts every reading in InfluxDB.
func TestTelegrafSystem(t *testing.T) {
	testenv.SkipIfShort(t)
	if _, err := TelegrafPath(); err != nil {
		t.Skip(err)
	}
	if _, err := MosquittoPath(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sys, err := StartSystem(ctx, SystemOptions{Mode: ModeTelegraf, Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("telegraf log:\n%s", sys.LogTail(4000))
		}
		sys.Close()
	})
	require.Positive(t, sys.TelegrafPID)
	require.Positive(t, sys.MosquittoPID)
	o := sys.Options()
	require.True(t, o.Direct)
	o.Devices, o.Rate, o.Duration, o.QoS = 10, 500, 2*time.Second, 1
	r, err := Run(ctx, o)
	require.NoError(t, err)
	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	t.Logf("\n%s", table.String())
	assert.Equal(t, int64(1000), r.Sent)
	assert.Equal(t, r.Sent, r.Acknowledged)
	assert.Equal(t, r.Sent, r.Stored)
	assert.True(t, r.ZeroLoss())
	assert.Equal(t, float64(r.Sent), r.ReportedStored, "influxd's own count agrees")
	assert.Positive(t, r.Writes)
	for _, name := range []string{"telegraf", "mosquitto", "influxd", "loadgen"} {
		assert.Contains(t, r.Procs, name)
	}
	assert.Equal(t, -1.0, r.LagP50Ms)
}

func TestRepeatSummary(t *testing.T) {
	mk := func(emb, tg, mq, iwBehind float64) Comparison {
		r := func(procs map[string]ProcUsage) *Result {
			return &Result{OfferedRate: 40000, StoredRate: 40000, Procs: procs, Cores: 2}
		}
		return Comparison{Systems: []SystemRun{
			{Mode: ModeEmbedded, Run: r(map[string]ProcUsage{"infrawatch": {CPUPer1000: emb}})},
			{Mode: ModeMosquitto, Run: r(map[string]ProcUsage{"infrawatch": {CPUPer1000: iwBehind}, "mosquitto": {CPUPer1000: mq}})},
			{Mode: ModeTelegraf, Run: r(map[string]ProcUsage{"telegraf": {CPUPer1000: tg}, "mosquitto": {CPUPer1000: mq}})},
		}}
	}
	cs := []Comparison{mk(0.010, 0.020, 0.020, 0.012), mk(0.013, 0.020, 0.020, 0.012), mk(0.012, 0.020, 0.020, 0.014)}
	assert.Equal(t, CPURatios{VsTelegrafPipeline: 0.25, VsTelegraf: 0.5, BehindMosquitto: 0.6}, cs[0].CPURatios())
	var b bytes.Buffer
	WriteRepeatSummary(&b, cs)
	out := b.String()
	t.Log("\n" + out)
	assert.Contains(t, out, "over 3 runs")
	assert.Regexp(t, `median\s+0\.30\s+0\.60\s+0\.60`, out)

	b.Reset()
	WriteRepeatSummary(&b, cs[:1])
	assert.Empty(t, b.String(), "one run: the table says it all")
	assert.Equal(t, CPURatios{}, (&Comparison{Systems: cs[0].Systems[:1]}).CPURatios(), "no Telegraf: no ratios")
	assert.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
	assert.Equal(t, 0.0, median(nil))
}
