package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/telemetry"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newTestStore returns a store on a new database of the shared influxd.
func newTestStore(t *testing.T) *Store {
	t.Helper()
	srv := testenv.Influx(t)
	s, err := New(testCtx(t), Options{URL: srv.URL, Bucket: testenv.NewDB(t), CreateDatabase: true,
		Logger: quietLogger(), Registerer: prometheus.NewRegistry()})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

// influxQL runs an InfluxQL statement through 1.8's /query and returns the
// raw JSON answer, to check what the store did by another way in.
func influxQL(t *testing.T, base, db, q string) string {
	t.Helper()
	resp, err := http.PostForm(base+"/query", url.Values{"q": {q}, "db": {db}})
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	return string(b)
}

func TestNewCreatesDatabase(t *testing.T) {
	srv := testenv.Influx(t)
	db := testenv.NewDB(t)
	require.NotContains(t, influxQL(t, srv.URL, "", "SHOW DATABASES"), `"`+db+`"`)

	s, err := New(testCtx(t), Options{URL: srv.URL, Bucket: db, CreateDatabase: true, Logger: quietLogger()})
	require.NoError(t, err)
	defer s.Close()
	assert.True(t, s.IsV1())
	assert.True(t, strings.HasPrefix(s.Version(), "1."), s.Version())
	assert.Equal(t, db, s.Bucket())
	assert.Contains(t, influxQL(t, srv.URL, "", "SHOW DATABASES"), `"`+db+`"`)
	require.NoError(t, s.Ping(testCtx(t)))

	// Again on an existing database: CREATE DATABASE is idempotent.
	s2, err := New(testCtx(t), Options{URL: srv.URL, Bucket: db + "/autogen", CreateDatabase: true, Logger: quietLogger()})
	require.NoError(t, err)
	defer s2.Close()
	require.NoError(t, s2.WriteLines(testCtx(t), []byte("m v=1\n"), 1), "db/rp bucket")
}

func TestWriteMissingDatabaseIsNotFound(t *testing.T) {
	srv := testenv.Influx(t)
	s, err := New(testCtx(t), Options{URL: srv.URL, Bucket: testenv.NewDB(t), Logger: quietLogger()})
	require.NoError(t, err)
	defer s.Close()
	err = s.WriteLines(testCtx(t), []byte("m v=1\n"), 1)
	require.ErrorIs(t, err, ErrNotFound)
	assert.NotErrorIs(t, err, ErrRetryable)
	assert.Contains(t, err.Error(), "database not found")
}

func TestWriteAndQuery10000Points(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)

	const devices, perDevice = 100, 100
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	at := func(i int) time.Time { return base.Add(time.Duration(i) * 10 * time.Second) }
	var buf []byte
	points := 0
	for d := range devices {
		tags := []Tag{{"device_id", fmt.Sprintf("tc-%03d", d)}, {"domain", "roads"}, {"site", "A1 north, km 12"}}
		for i := range perDevice {
			values := []telemetry.Value{num("flow_vph", float64(d*1000+i)), num("speed_kmh", 54.5), flag("congested", i%2 == 0)}
			buf = AppendPoint(buf, "traffic_counter", tags, values, at(i))
			points++
		}
	}
	// Two batches, as ingest would send them.
	half := 0
	for n, i := 0, 0; i < len(buf); i++ {
		if buf[i] == '\n' {
			if n++; n == points/2 {
				half = i + 1
				break
			}
		}
	}
	require.NoError(t, s.WriteLines(ctx, buf[:half], points/2))
	require.NoError(t, s.WriteLines(ctx, buf[half:], points-points/2))
	assert.Equal(t, float64(points), counterValue(t, s.metrics.points))
	assert.Equal(t, uint64(2), histogramCount(t, s.metrics.writeDuration))

	db := FluxString(s.Bucket())
	count := func(field string) int64 {
		res, err := s.Query(ctx, `from(bucket: `+db+`) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == "traffic_counter" and r._field == `+FluxString(field)+`)
  |> group() |> count()`)
		require.NoError(t, err)
		defer res.Close()
		require.True(t, res.Next(), "a count row: %v", res.Err())
		n, ok := res.Record().Value().(int64)
		require.True(t, ok, "%T", res.Record().Value())
		require.False(t, res.Next())
		require.NoError(t, res.Err())
		return n
	}
	assert.Equal(t, int64(points), count("flow_vph"))
	assert.Equal(t, int64(points), count("congested"))

	// One device's points, back with their tags, times and typed values.
	res, err := s.Query(ctx, `from(bucket: `+db+`) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == "traffic_counter" and r.device_id == "tc-007")
  |> sort(columns: ["_time"])`)
	require.NoError(t, err)
	defer res.Close()
	got := map[string]int{}
	for res.Next() {
		r := res.Record()
		assert.Equal(t, "roads", r.ValueByKey("domain"))
		assert.Equal(t, "A1 north, km 12", r.ValueByKey("site"))
		i := int(r.Time().Sub(base) / (10 * time.Second))
		require.True(t, r.Time().Equal(at(i)), "time %v", r.Time())
		switch r.Field() {
		case "flow_vph":
			assert.Equal(t, float64(7000+i), r.Value(), "an integral reading is a float")
		case "speed_kmh":
			assert.Equal(t, 54.5, r.Value())
		case "congested":
			assert.Equal(t, i%2 == 0, r.Value())
		}
		got[r.Field()]++
	}
	require.NoError(t, res.Err())
	assert.Equal(t, map[string]int{"flow_vph": perDevice, "speed_kmh": perDevice, "congested": perDevice}, got)
}

func histogramCount(t *testing.T, h prometheus.Histogram) uint64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(h))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	return mfs[0].GetMetric()[0].GetHistogram().GetSampleCount()
}

// TestEscapingAgainstInflux writes names that line protocol must escape or
// cannot carry, and reads them back from the real server.
func TestEscapingAgainstInflux(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)
	now := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	cases := []struct {
		meas, tagValue, field     string
		wantMeas, wantTag, wantFd string
	}{
		{"plain", "v", "f", "plain", "v", "f"},
		{"sp ace,comma=eq", "a b,c=d", "x y,z=w", "sp ace,comma=eq", "a b,c=d", "x y,z=w"},
		{"nl\nmeas", "line1\nline2\r", "f\tg", "nl meas", "line1 line2 ", "f g"},
		{`back\slash`, `a\b`, `c\d`, `back\slash`, `a\b`, `c\d`},
		{`bs_before\,comma`, `x\,y`, `p\=q`, `bs_before/,comma`, `x/,y`, `p/=q`},
		{`two\\bs`, `a\\b`, `c\\\\d`, `two/\bs`, `a/\b`, `c///\d`},
		{"bs\\\nnl", "v\\\n", "f\\\t", "bs/ nl", "v/ ", "f/ "},
		{`trail\`, `trail\`, `trail\`, `trail/`, `trail/`, `trail/`},
		{"#hash", "#v", "#f", "_hash", "#v", "#f"},
		{"quote\"d", `"q"`, `f"`, "quote\"d", `"q"`, `f"`},
		{"ünï", "Zürich Hbf", "débit", "ünï", "Zürich Hbf", "débit"},
		{"dollar", "${x}", "f", "dollar", "${x}", "f"},
	}
	var buf []byte
	for i, c := range cases {
		buf = AppendPoint(buf, c.meas, []Tag{{"k", c.tagValue}, {"n", fmt.Sprint(i)}}, []telemetry.Value{num(c.field, float64(i))}, now)
	}
	require.NoError(t, s.WriteLines(ctx, buf, len(cases)), "%s", buf)

	for i, c := range cases {
		q := fmt.Sprintf(`from(bucket: %s) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == %s and r.k == %s and r._field == %s)`,
			FluxString(s.Bucket()), FluxString(c.wantMeas), FluxString(c.wantTag), FluxString(c.wantFd))
		res, err := s.Query(ctx, q)
		require.NoError(t, err, q)
		require.True(t, res.Next(), "case %d %q: no row; %v\n%s", i, c.meas, res.Err(), q)
		r := res.Record()
		assert.Equal(t, fmt.Sprint(i), r.ValueByKey("n"))
		assert.Equal(t, float64(i), r.Value())
		assert.True(t, r.Time().Equal(now))
		assert.False(t, res.Next())
		require.NoError(t, res.Err())
		require.NoError(t, res.Close())
	}
}

// TestNumbersAgainstInflux: what AppendPoint writes for whole numbers
// (integer digits) and the rest comes back from the real server as the same
// float64 bits, as a float field, also when a series mixes both forms.
func TestNumbersAgainstInflux(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	vals := []float64{54.5, 55, -42, math.Copysign(0, -1), 0, 999999999999999, -999999999999999, 1e15, 1e6,
		1<<53 + 2, 0.1, 1e-300, math.MaxFloat64, -math.MaxFloat64}
	var buf []byte
	for i, v := range vals {
		buf = AppendPoint(buf, "numbers", []Tag{{"device_id", "n-1"}}, []telemetry.Value{num("v", v)}, base.Add(time.Duration(i)*time.Second))
	}
	require.NoError(t, s.WriteLines(ctx, buf, len(vals)), "%s", buf)
	res, err := s.Query(ctx, `from(bucket: `+FluxString(s.Bucket())+`) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == "numbers" and r._field == "v")`)
	require.NoError(t, err)
	defer res.Close()
	var got []float64
	for res.Next() {
		f, ok := res.Record().Value().(float64)
		require.True(t, ok, "a float field, got %T", res.Record().Value())
		got = append(got, f)
	}
	require.NoError(t, res.Err())
	require.Len(t, got, len(vals))
	for i, v := range vals {
		assert.Equal(t, math.Float64bits(v), math.Float64bits(got[i]), "%v came back as %v\n%s", v, got[i], buf)
	}
}

func TestWriteBadLineProtocolIsNotRetryable(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)

	err := s.WriteLines(ctx, []byte("this is not line protocol\n"), 1)
	var we *WriteError
	require.ErrorAs(t, err, &we)
	assert.Equal(t, http.StatusBadRequest, we.Status)
	assert.False(t, we.Retryable)
	assert.NotErrorIs(t, err, ErrRetryable)
	assert.ErrorIs(t, err, ErrBadRequest)
	assert.Equal(t, kindBadRequest, we.Kind)
	assert.NotEmpty(t, we.Message)
	assert.Equal(t, 1.0, counterValue(t, s.metrics.errors.WithLabelValues(kindBadRequest)))

	// A field changing type: 1.8 stores the good point, drops the other.
	require.NoError(t, s.WriteLines(ctx, []byte("m v=1\n"), 1))
	err = s.WriteLines(ctx, []byte("m v=2\nm v=\"text\"\n"), 2)
	require.ErrorAs(t, err, &we)
	assert.True(t, we.Partial, we.Message)
	assert.NotErrorIs(t, err, ErrRetryable)
}

func TestWriteStoppedServerIsRetryable(t *testing.T) {
	srv := testenv.OwnInflux(t)
	ctx := testCtx(t)
	s, err := New(ctx, Options{URL: srv.URL, Bucket: "own", CreateDatabase: true, Timeout: 2 * time.Second,
		Logger: quietLogger(), Registerer: prometheus.NewRegistry()})
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.WriteLines(ctx, []byte("m v=1\n"), 1))

	srv.Stop()
	err = s.WriteLines(ctx, []byte("m v=2\n"), 1)
	var we *WriteError
	require.ErrorAs(t, err, &we)
	assert.ErrorIs(t, err, ErrRetryable)
	assert.Equal(t, 0, we.Status)
	assert.Equal(t, kindNetwork, we.Kind)
	require.Error(t, s.Ping(ctx))
	assert.ErrorIs(t, s.Ping(ctx), ErrRetryable)

	// New against a stopped server fails retryably too.
	_, err = New(ctx, Options{URL: srv.URL, Bucket: "own", Logger: quietLogger()})
	require.ErrorIs(t, err, ErrRetryable)

	// Back up with its data: the same store writes again.
	require.NoError(t, srv.Start(ctx))
	require.NoError(t, s.Ping(ctx))
	require.NoError(t, s.WriteLines(ctx, []byte("m v=3\n"), 1))
}

func TestWritePausedServerTimesOut(t *testing.T) {
	srv := testenv.OwnInflux(t)
	ctx := testCtx(t)
	s, err := New(ctx, Options{URL: srv.URL, Bucket: "own", CreateDatabase: true, Timeout: 300 * time.Millisecond,
		Logger: quietLogger()})
	require.NoError(t, err)
	defer s.Close()

	require.NoError(t, srv.Pause())
	defer func() { _ = srv.Resume() }()
	start := time.Now()
	buf := []byte("m v=1\n")
	err = s.WriteLines(ctx, buf, 1)
	elapsed := time.Since(start)
	var we *WriteError
	require.ErrorAs(t, err, &we)
	assert.ErrorIs(t, err, ErrRetryable)
	assert.Equal(t, kindTimeout, we.Kind)
	assert.Less(t, elapsed, 3*time.Second, "the per-request timeout bounds the attempt")
	buf[0] = 'x' // the caller may reuse its buffer at once (checked by -race)

	// A cancelled context is retryable too, as "canceled".
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	err = s.WriteLines(cctx, []byte("m v=1\n"), 1)
	require.ErrorAs(t, err, &we)
	assert.True(t, errors.Is(err, context.Canceled), "%v", err)
	assert.Equal(t, kindCanceled, we.Kind)
	assert.ErrorIs(t, err, ErrRetryable)
}

func TestQuery(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)
	now := time.Now().Add(-time.Minute)
	var buf []byte
	for i := range 5 {
		buf = AppendPoint(buf, "ups", []Tag{{"device_id", "ups-1"}}, []telemetry.Value{num("charge", float64(90+i))}, now.Add(time.Duration(i)*time.Second))
	}
	require.NoError(t, s.WriteLines(ctx, buf, 5))

	res, err := s.Query(ctx, `from(bucket: `+FluxString(s.Bucket())+`) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == "ups" and r._field == "charge") |> count()`)
	require.NoError(t, err)
	require.True(t, res.Next(), "%v", res.Err())
	assert.Equal(t, int64(5), res.Record().Value())
	assert.Equal(t, "ups-1", res.Record().ValueByKey("device_id"))
	require.NoError(t, res.Close())

	// The SPEC's p95 form works on 1.8's Flux.
	res, err = s.Query(ctx, `from(bucket: `+FluxString(s.Bucket())+`) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == "ups" and r._field == "charge")
  |> quantile(q: 0.95, method: "exact_selector")`)
	require.NoError(t, err)
	require.True(t, res.Next(), "%v", res.Err())
	assert.Equal(t, 94.0, res.Record().Value())
	require.NoError(t, res.Close())

	// A Flux syntax error is not retryable (1.8 answers it with a 500).
	_, err = s.Query(ctx, `from(bucket: ) |>`)
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrRetryable)
	var qe *QueryError
	require.ErrorAs(t, err, &qe)
	assert.GreaterOrEqual(t, qe.Status, 400, qe.Message)
	assert.Contains(t, qe.Message, "pipe destination")
}

func TestFluxStringAgainstInflux(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)
	require.NoError(t, s.WriteLines(ctx, []byte("m v=1\n"), 1))
	for _, v := range []string{"plain", `q"uote`, `back\slash`, `trail\`, "new\nline\ttab", "${interp}", "$ {x} $", "ünï"} {
		res, err := s.Query(ctx, `from(bucket: `+FluxString(s.Bucket())+`) |> range(start: -1h)
  |> map(fn: (r) => ({_time: r._time, s: `+FluxString(v)+`}))`)
		require.NoError(t, err, "%q", v)
		require.True(t, res.Next(), "%q: %v", v, res.Err())
		assert.Equal(t, v, res.Record().ValueByKey("s"))
		require.NoError(t, res.Close())
	}
	// A carriage return is escaped too (the CSV answer cannot carry it back).
	res, err := s.Query(ctx, `from(bucket: `+FluxString(s.Bucket())+`) |> range(start: -1h)
  |> filter(fn: (r) => r._field != `+FluxString("a\rb")+`)`)
	require.NoError(t, err)
	require.True(t, res.Next(), "%v", res.Err())
	require.NoError(t, res.Close())
}

func TestFluxString(t *testing.T) {
	assert.Equal(t, `"a\\b\"c\n\r\t\${x} $ {y} $"`, FluxString("a\\b\"c\n\r\t${x} $ {y} $"))
}
