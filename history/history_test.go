package history

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
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

// t0 is a midnight three weeks back: recent enough for the retention
// policies the tests set, whatever the date.
var t0 = time.Now().UTC().Truncate(24 * time.Hour).Add(-21 * 24 * time.Hour)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// fixture is a database with a raw store, a rollup store and a Service.
type fixture struct {
	srv    *testenv.InfluxServer
	db     string
	raw    *store.Store
	rollup *store.Store
	svc    *Service
}

func newFixture(t testing.TB, mod ...func(*Options)) *fixture {
	t.Helper()
	srv := testenv.Influx(t)
	f := &fixture{srv: srv, db: testenv.NewDB(t)}
	ctx := testCtx(t)
	var err error
	f.raw, err = store.New(ctx, store.Options{URL: srv.URL, Bucket: f.db, CreateDatabase: true, Logger: quiet(), Timeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(f.raw.Close)
	f.rollup, err = store.New(ctx, store.Options{URL: srv.URL, Bucket: f.db + "/rollup_1h", Logger: quiet(), Timeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(f.rollup.Close)
	f.svc = f.service(t, mod...)
	require.NoError(t, f.svc.EnsureRetention(ctx))
	return f
}

func (f *fixture) service(t testing.TB, mod ...func(*Options)) *Service {
	t.Helper()
	o := Options{Store: f.raw, Bucket: f.db, RollupWriter: f.rollup, InfluxURL: f.srv.URL,
		RollupRetention: 400 * 24 * time.Hour, Logger: quiet(), Registerer: prometheus.NewRegistry(),
		Now: func() time.Time { return t0.Add(10 * 24 * time.Hour) }}
	for _, m := range mod {
		m(&o)
	}
	s, err := New(o)
	require.NoError(t, err)
	return s
}

// pt is one reading of the test data.
type pt struct {
	typ, device, site, domain string
	t                         time.Time
	v                         float64
	isBool                    bool
}

func (f *fixture) write(t testing.TB, pts []pt, field string) {
	t.Helper()
	var buf []byte
	n := 0
	for _, p := range pts {
		l := store.StartLine(buf, p.typ)
		l.Tag("device_id", p.device)
		l.Tag("domain", p.domain)
		l.Tag("site", p.site)
		if p.isBool {
			l.Bool(field, p.v == 1)
		} else {
			l.Float(field, p.v)
		}
		buf, _ = l.End(p.t)
		n++
		if n == 5000 {
			require.NoError(t, f.raw.WriteLines(testCtx(t), buf, n))
			buf, n = buf[:0], 0
		}
	}
	require.NoError(t, f.raw.WriteLines(testCtx(t), buf, n))
}

type devSpec struct{ id, typ, site, domain string }

var fleet = []devSpec{
	{"tc-1", "traffic_counter", "s1", "roads"},
	{"tc-2", "traffic_counter", "s1", "roads"},
	{"tc-3", "traffic_counter", "s2", "roads"},
	{"rt-1", "router", "s1", "network"},
}

// fleetData is three days of integer readings every 10 minutes (device i
// offset by i seconds, so no two devices share a time); tc-2 misses every
// fifth reading.
func fleetData() []pt {
	var pts []pt
	for d, dev := range fleet {
		for i := 0; i < 3*24*6; i++ {
			if dev.id == "tc-2" && i%5 == 4 {
				continue
			}
			pts = append(pts, pt{typ: dev.typ, device: dev.id, site: dev.site, domain: dev.domain,
				t: t0.Add(time.Duration(i)*10*time.Minute + time.Duration(d)*time.Second),
				v: float64((i*7 + d*13) % 101)})
		}
	}
	return pts
}

func okData() []pt {
	var pts []pt
	for i := 0; i < 3*24*6; i++ {
		v := 0.0
		if i%3 == 0 {
			v = 1
		}
		pts = append(pts, pt{typ: "traffic_counter", device: "tc-1", site: "s1", domain: "roads",
			t: t0.Add(time.Duration(i) * 10 * time.Minute), v: v, isBool: true})
	}
	return pts
}

func keyOf(p pt, g GroupBy) string {
	switch g {
	case BySite:
		return p.site
	case ByDomain:
		return p.domain
	case ByType:
		return p.typ
	}
	return p.device
}

// reference computes the answer in Go, as Flux defines it: epoch-aligned
// windows clipped to the range and labelled with their start; p95 is the
// exact_selector quantile (index ceil(q*n)-1 of the sorted values).
func reference(pts []pt, q Query) map[string]map[time.Time]float64 {
	type acc struct {
		vals  []float64
		lastT time.Time
		last  float64
	}
	groups := map[string]map[time.Time]*acc{}
	for _, p := range pts {
		if p.t.Before(q.Start) || !p.t.Before(q.Stop) {
			continue
		}
		if (q.Filter.DeviceID != "" && p.device != q.Filter.DeviceID) || (q.Filter.Site != "" && p.site != q.Filter.Site) ||
			(q.Filter.Domain != "" && p.domain != q.Filter.Domain) || (q.Filter.Type != "" && p.typ != q.Filter.Type) {
			continue
		}
		w := p.t.Truncate(q.Every)
		if w.Before(q.Start) {
			w = q.Start
		}
		k := keyOf(p, q.GroupBy)
		if groups[k] == nil {
			groups[k] = map[time.Time]*acc{}
		}
		a := groups[k][w]
		if a == nil {
			a = &acc{}
			groups[k][w] = a
		}
		a.vals = append(a.vals, p.v)
		if !p.t.Before(a.lastT) {
			a.lastT, a.last = p.t, p.v
		}
	}
	out := map[string]map[time.Time]float64{}
	for k, ws := range groups {
		out[k] = map[time.Time]float64{}
		for w, a := range ws {
			var r float64
			switch q.Agg {
			case AggMean, AggSum:
				for _, v := range a.vals {
					r += v
				}
				if q.Agg == AggMean {
					r /= float64(len(a.vals))
				}
			case AggMin:
				r = math.Inf(1)
				for _, v := range a.vals {
					r = math.Min(r, v)
				}
			case AggMax:
				r = math.Inf(-1)
				for _, v := range a.vals {
					r = math.Max(r, v)
				}
			case AggCount:
				r = float64(len(a.vals))
			case AggLast:
				r = a.last
			case AggP95:
				s := append([]float64(nil), a.vals...)
				sort.Float64s(s)
				i := int(math.Ceil(0.95*float64(len(s)))) - 1
				if i < 0 {
					i = 0
				}
				r = s[i]
			}
			out[k][w] = r
		}
	}
	return out
}

func asMap(a Answer) map[string]map[time.Time]float64 {
	out := map[string]map[time.Time]float64{}
	for _, s := range a.Series {
		out[s.Key] = map[time.Time]float64{}
		for i, p := range s.Points {
			if i > 0 && !s.Points[i-1].Time.Before(p.Time) {
				panic("points out of order")
			}
			out[s.Key][p.Time] = p.Value
		}
	}
	return out
}

func requireSame(t *testing.T, want, got map[string]map[time.Time]float64, msg string) {
	t.Helper()
	require.Equal(t, len(want), len(got), "%s: series", msg)
	for k, ws := range want {
		require.Contains(t, got, k, msg)
		require.Equal(t, len(ws), len(got[k]), "%s: windows of %s", msg, k)
		for w, v := range ws {
			g, ok := got[k][w]
			require.True(t, ok, "%s: %s has no window %s", msg, k, w)
			require.InDelta(t, v, g, 1e-9*math.Max(1, math.Abs(v)), "%s: %s at %s", msg, k, w)
		}
	}
}

func (f *fixture) collect(t *testing.T, v url.Values) Answer {
	t.Helper()
	q, err := f.svc.ParseQuery(v, false)
	require.NoError(t, err, v.Encode())
	p, err := f.svc.Prepare(q)
	require.NoError(t, err)
	st := time.Now()
	a, err := f.svc.Collect(testCtx(t), p)
	require.NoError(t, err, strings.Join(f.svc.Flux(p), "\n"))
	if os.Getenv("HDEBUG") != "" {
		fmt.Println(time.Since(st), v.Encode())
	}
	return a
}

// TestHandComputed pins the semantics with numbers worked out by hand.
func TestHandComputed(t *testing.T) {
	f := newFixture(t)
	var pts []pt
	for i := 1; i <= 20; i++ {
		pts = append(pts, pt{typ: "probe", device: "hx-1", site: "hs", domain: "roads", t: t0.Add(time.Duration(i-1) * time.Minute), v: float64(i)})
	}
	pts = append(pts, pt{typ: "probe", device: "hx-2", site: "hs", domain: "roads", t: t0.Add(30 * time.Minute), v: 100})
	f.write(t, pts, "load")

	site := url.Values{"metric": {"load"}, "group_by": {"site"}, "start": {t0.Format(time.RFC3339)},
		"stop": {t0.Add(time.Hour).Format(time.RFC3339)}, "every": {"1h"}}
	for agg, want := range map[Agg]float64{AggMean: 310.0 / 21, AggMin: 1, AggMax: 100, AggSum: 310, AggCount: 21, AggLast: 100, AggP95: 20} {
		v := cloneValues(site)
		v.Set("agg", string(agg))
		a := f.collect(t, v)
		require.Equal(t, TierRaw, a.Source)
		require.Len(t, a.Series, 1, agg)
		require.Equal(t, "hs", a.Series[0].Key)
		require.Equal(t, []Sample{{Time: t0, Value: want}}, a.Series[0].Points, agg)
	}
	dev := cloneValues(site)
	dev.Set("group_by", "device")
	dev.Set("agg", "p95")
	dev.Set("every", "10m")
	a := f.collect(t, dev)
	require.Equal(t, []Series{
		{Key: "hx-1", Points: []Sample{{t0, 10}, {t0.Add(10 * time.Minute), 20}}}, // ceil(.95*10)-1 = 9: the largest
		{Key: "hx-2", Points: []Sample{{t0.Add(30 * time.Minute), 100}}},
	}, a.Series)

	// CSV: header, then rows, window start in RFC 3339.
	q, err := f.svc.ParseQuery(dev, true)
	require.NoError(t, err)
	p, err := f.svc.Prepare(q)
	require.NoError(t, err)
	var buf bytes.Buffer
	began := 0
	require.NoError(t, f.svc.WriteCSV(testCtx(t), &buf, p, func() { began++ }))
	require.Equal(t, 1, began)
	ts := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339) }
	require.Equal(t, "device_id,time,p95\n"+
		"hx-1,"+ts(0)+",10\n"+
		"hx-1,"+ts(10*time.Minute)+",20\n"+
		"hx-2,"+ts(30*time.Minute)+",100\n", buf.String())

	// No data: just the header.
	buf.Reset()
	q.Filter.DeviceID = "nobody"
	p, err = f.svc.Prepare(q)
	require.NoError(t, err)
	require.NoError(t, f.svc.WriteCSV(testCtx(t), &buf, p, nil))
	require.Equal(t, "device_id,time,p95\n", buf.String())

	// Injection through a (legal) site value: escaped, so it only matches
	// a site of that literal name: none.
	for _, evil := range []string{`hs" or r._field != "`, `hs") |> drop(columns: ["_value"]) |> yield(name: "x`, `${hs}`, `hs\`} {
		v := cloneValues(site)
		v.Set("site", evil)
		a := f.collect(t, v)
		require.Empty(t, a.Series, evil)
	}
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// TestAggregatesMatchReference checks every agg, grouping and window size
// against a Go computation over the same readings.
func TestAggregatesMatchReference(t *testing.T) {
	f := newFixture(t)
	data := fleetData()
	f.write(t, data, "flow")
	start, stop := t0.Add(5*time.Minute), t0.Add(2*24*time.Hour+7*time.Minute)
	for _, every := range []time.Duration{10 * time.Minute, time.Hour, 24 * time.Hour} {
		for _, g := range []GroupBy{ByDevice, BySite, ByDomain, ByType} {
			if every != time.Hour && (g == ByDomain || g == ByType) {
				continue // every agg and grouping at 1h; the window sizes on two groupings
			}
			for _, agg := range Aggs {
				q := Query{Metric: "flow", GroupBy: g, Agg: agg, Every: every, Start: start, Stop: stop, Tier: TierRaw}
				v := url.Values{"metric": {"flow"}, "group_by": {string(g)}, "agg": {string(agg)}, "every": {fmtDuration(every)},
					"start": {start.Format(time.RFC3339)}, "stop": {stop.Format(time.RFC3339)}}
				a := f.collect(t, v)
				requireSame(t, reference(data, q), asMap(a), fmt.Sprintf("%s by %s every %s", agg, g, every))
			}
		}
	}
	// Filters combine.
	q := Query{Metric: "flow", GroupBy: ByDevice, Agg: AggSum, Every: time.Hour, Start: t0, Stop: t0.Add(24 * time.Hour),
		Filter: Filter{Site: "s1", Domain: "roads", Type: "traffic_counter"}}
	a := f.collect(t, url.Values{"metric": {"flow"}, "agg": {"sum"}, "site": {"s1"}, "domain": {"roads"}, "type": {"traffic_counter"},
		"start": {t0.Format(time.RFC3339)}, "stop": {t0.Add(24 * time.Hour).Format(time.RFC3339)}})
	require.Len(t, a.Series, 2)
	requireSame(t, reference(data, q), asMap(a), "filtered")
}

// TestRollupTier rolls up and checks that the coarse tier answers long
// questions with the fine tier's aggregates.
func TestRollupTier(t *testing.T) {
	f := newFixture(t)
	data := fleetData()
	f.write(t, data, "flow")
	f.write(t, okData(), "ok")
	ctx := testCtx(t)

	n, err := f.svc.Rollup(ctx, t0, t0.Add(3*24*time.Hour))
	require.NoError(t, err)
	// 4 devices x 72 hours x 5 stats of flow, 72 x 5 of ok.
	require.Equal(t, 4*72*5+72*5, n)
	require.Equal(t, t0.Add(3*24*time.Hour), f.svc.RolledUpTo())
	// Idempotent: running it again writes the same points, counts stay.
	_, err = f.svc.Rollup(ctx, t0, t0.Add(3*24*time.Hour))
	require.NoError(t, err)

	start, stop := t0, t0.Add(3*24*time.Hour)
	for _, every := range []string{"1h", "1d"} {
		for _, g := range []string{"device", "site", "domain", "type"} {
			for _, agg := range []string{"mean", "min", "max", "sum", "count"} {
				for _, metric := range []string{"flow", "ok"} {
					if metric == "ok" && (g != "device" || every != "1d") {
						continue
					}
					v := url.Values{"metric": {metric}, "group_by": {g}, "agg": {agg}, "every": {every},
						"start": {start.Format(time.RFC3339)}, "stop": {stop.Format(time.RFC3339)}}
					coarse := f.collect(t, v)
					require.Equal(t, TierRollup, coarse.Source)
					v.Set("tier", "raw")
					fine := f.collect(t, v)
					require.Equal(t, TierRaw, fine.Source)
					require.NotEmpty(t, fine.Series)
					requireSame(t, asMap(fine), asMap(coarse), fmt.Sprintf("%s %s by %s every %s", metric, agg, g, every))
				}
			}
		}
	}
	// The share of true of a boolean, from either tier.
	a := f.collect(t, url.Values{"metric": {"ok"}, "every": {"1d"}, "start": {start.Format(time.RFC3339)}, "stop": {stop.Format(time.RFC3339)}})
	require.Equal(t, 48.0/144, a.Series[0].Points[0].Value)

	// Aggregates that do not compose, and windows under an hour, read raw.
	for _, v := range []url.Values{
		{"metric": {"flow"}, "agg": {"p95"}, "every": {"1d"}, "start": {start.Format(time.RFC3339)}, "stop": {stop.Format(time.RFC3339)}},
		{"metric": {"flow"}, "agg": {"mean"}, "every": {"30m"}, "start": {start.Format(time.RFC3339)}, "stop": {stop.Format(time.RFC3339)}},
	} {
		require.Equal(t, TierRaw, f.collect(t, v).Source)
	}

	// A second service that rolled up only two days answers the third from
	// raw data, with the same numbers. It does not know the field types (no
	// InfluxURL, as on 2.x), so it converts every value.
	f2 := f.service(t, func(o *Options) { o.InfluxURL = "" })
	_, err = f2.Rollup(ctx, t0, t0.Add(2*24*time.Hour))
	require.NoError(t, err)
	for _, every := range []string{"1h", "1d"} {
		v := url.Values{"metric": {"flow"}, "group_by": {"site"}, "agg": {"mean"}, "every": {every},
			"start": {start.Format(time.RFC3339)}, "stop": {stop.Add(30 * time.Minute).Format(time.RFC3339)}}
		q, err := f2.ParseQuery(v, false)
		require.NoError(t, err)
		p, err := f2.Prepare(q)
		require.NoError(t, err)
		require.Equal(t, TierMixed, p.Source)
		mixed, err := f2.Collect(ctx, p)
		require.NoError(t, err)
		q.Tier = TierRaw
		p, err = f2.Prepare(q)
		require.NoError(t, err)
		fine, err := f2.Collect(ctx, p)
		require.NoError(t, err)
		requireSame(t, asMap(fine), asMap(mixed), "mixed every "+every)
	}
}

func TestLimits(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxPoints = 50 })
	f.write(t, fleetData(), "flow")
	q, err := f.svc.ParseQuery(url.Values{"metric": {"flow"}, "start": {t0.Format(time.RFC3339)}, "stop": {t0.Add(24 * time.Hour).Format(time.RFC3339)}}, false)
	require.NoError(t, err)
	p, err := f.svc.Prepare(q)
	require.NoError(t, err)
	_, err = f.svc.Collect(testCtx(t), p)
	require.ErrorIs(t, err, ErrTooManyPoints)
	var pe *ParamError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, "every", pe.Param)
	require.Contains(t, pe.Message, "50")

	// Within the cap.
	q.Filter.DeviceID = "tc-1"
	p, err = f.svc.Prepare(q)
	require.NoError(t, err)
	a, err := f.svc.Collect(testCtx(t), p)
	require.NoError(t, err)
	require.Len(t, a.Series[0].Points, 24)
}

func TestAvailability(t *testing.T) {
	f := newFixture(t)
	f.write(t, fleetData(), "flow")
	f.write(t, okData(), "ok") // same times as tc-1's flow: one reading, two metrics
	day := 24 * time.Hour
	q, err := f.svc.ParseAvailability(url.Values{"domain": {"roads"}, "start": {t0.Format(time.RFC3339)},
		"stop":    {t0.Add(2 * day).Format(time.RFC3339)},
		"exclude": {t0.Add(day).Format(time.RFC3339) + "/" + t0.Add(day+6*time.Hour).Format(time.RFC3339)}})
	require.NoError(t, err)
	q.Devices = []ExpectedDevice{{"tc-1", 10 * time.Minute}, {"tc-2", 10 * time.Minute}, {"tc-3", 5 * time.Minute}, {"ghost", time.Minute}}
	q.ExcludeByDevice = map[string][]Interval{"tc-3": {{t0, t0.Add(day)}}}
	got, err := f.svc.Availability(testCtx(t), q)
	require.NoError(t, err)
	ratio := func(r float64) *float64 { return &r }
	covered := (42 * time.Hour).Seconds()
	require.Equal(t, []Availability{
		// 42h covered: 252 readings expected and received.
		{DeviceID: "tc-1", IntervalSeconds: 600, CoveredSeconds: covered, Expected: 252, Received: 252, Availability: ratio(1)},
		// tc-2 skips every fifth reading (i%5==4): 288 slots over two
		// days, 36 excluded in the 6h window; of 0..143 and 180..287,
		// 28 + 21 are skipped.
		{DeviceID: "tc-2", IntervalSeconds: 600, CoveredSeconds: covered, Expected: 252, Received: 252 - 49, Availability: ratio(203.0 / 252)},
		// tc-3 also excludes its first day: 18h covered, 216 expected at
		// 5m, 108 received at 10m.
		{DeviceID: "tc-3", IntervalSeconds: 300, CoveredSeconds: (18 * time.Hour).Seconds(), Expected: 216, Received: 108, Availability: ratio(0.5)},
		{DeviceID: "ghost", IntervalSeconds: 60, CoveredSeconds: covered, Expected: 2520, Received: 0, Availability: ratio(0)},
	}, got)

	_, err = f.svc.Availability(testCtx(t), AvailabilityQuery{Start: t0, Stop: t0.Add(day), Devices: []ExpectedDevice{{`x"`, time.Minute}}})
	require.ErrorContains(t, err, "device_id")
}

func TestRunRollupAndRetention(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RollupRetention = 0 })
	f.write(t, fleetData(), "flow")
	now := t0.Add(3*24*time.Hour + 20*time.Minute)
	svc := f.service(t, func(o *Options) {
		o.Now = func() time.Time { return now }
		o.RollupBackfill = 4 * 24 * time.Hour
		o.RollupInterval = time.Hour
		o.RollupRetention = 30 * 24 * time.Hour
		o.RawRetention = 400 * 24 * time.Hour
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- svc.RunRollup(ctx) }()
	require.Eventually(t, func() bool { return !svc.RolledUpTo().IsZero() }, time.Minute, 20*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.Equal(t, t0.Add(3*24*time.Hour), svc.RolledUpTo())

	// The retention policies were altered to the new durations.
	resp, err := f.svc.opts.HTTPClient.PostForm(f.srv.URL+"/query", url.Values{"q": {"SHOW RETENTION POLICIES ON " + influxIdent(f.db)}})
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), `["rollup_1h","720h0m0s"`)
	require.Contains(t, string(body), `["autogen","9600h0m0s"`)

	a := f.collect(t, url.Values{"metric": {"flow"}, "group_by": {"type"}, "agg": {"count"}, "every": {"1d"},
		"start": {t0.Format(time.RFC3339)}, "stop": {t0.Add(3 * 24 * time.Hour).Format(time.RFC3339)}, "tier": {"rollup_1h"}})
	require.Equal(t, "router", a.Series[0].Key)
	require.Equal(t, 144.0, a.Series[0].Points[0].Value)
}

// TestMixedTierWindowsNotDividingADay: Flux aligns windows to the Unix
// epoch, Go's Time.Truncate to year 1. For 5h, 7h or 1w windows the two
// differ, so a split computed with Truncate fell inside a Flux window: the
// window came back as two points, one from each tier, each with part of
// its readings.
func TestMixedTierWindowsNotDividingADay(t *testing.T) {
	f := newFixture(t)
	f.write(t, fleetData(), "flow")
	ctx := testCtx(t)
	_, err := f.svc.Rollup(ctx, t0, t0.Add(2*24*time.Hour))
	require.NoError(t, err)
	for _, every := range []string{"5h", "7h", "1w"} {
		for _, agg := range []string{"mean", "count"} {
			v := url.Values{"metric": {"flow"}, "group_by": {"site"}, "agg": {agg}, "every": {every},
				"start": {t0.Format(time.RFC3339)}, "stop": {t0.Add(3 * 24 * time.Hour).Format(time.RFC3339)}}
			q, err := f.svc.ParseQuery(v, false)
			require.NoError(t, err)
			p, err := f.svc.Prepare(q)
			require.NoError(t, err)
			mixed, err := f.svc.Collect(ctx, p)
			require.NoError(t, err)
			q.Tier = TierRaw
			p, err = f.svc.Prepare(q)
			require.NoError(t, err)
			fine, err := f.svc.Collect(ctx, p)
			require.NoError(t, err)
			requireSame(t, asMap(fine), asMap(mixed), agg+" every "+every+" ("+mixed.Source+")")
		}
	}
}

// TestForcedRollupStopInsideAnHour: the rollup's last hour holds readings
// up to its end, after a stop inside it: tier=rollup_1h answered for
// readings past stop. It is a 400 now, as the other conditions of the
// tier are.
func TestForcedRollupStopInsideAnHour(t *testing.T) {
	f := newFixture(t)
	f.write(t, fleetData(), "flow")
	_, err := f.svc.Rollup(testCtx(t), t0, t0.Add(2*24*time.Hour))
	require.NoError(t, err)
	v := url.Values{"metric": {"flow"}, "group_by": {"site"}, "agg": {"count"}, "every": {"1h"},
		"start": {t0.Format(time.RFC3339)}, "stop": {t0.Add(24*time.Hour + 30*time.Minute).Format(time.RFC3339)}}
	v.Set("tier", "raw")
	fine := f.collect(t, v)
	v.Set("tier", "rollup_1h")
	q, err := f.svc.ParseQuery(v, false)
	require.NoError(t, err)
	p, err := f.svc.Prepare(q)
	if err == nil {
		coarse, err := f.svc.Collect(testCtx(t), p)
		require.NoError(t, err)
		requireSame(t, asMap(fine), asMap(coarse), "rollup with stop inside an hour")
		return
	}
	var ve ValidationErrors
	require.ErrorAs(t, err, &ve)
	require.Contains(t, ve, "tier")
}

// TestAlertEventsAreNotReadings: alert transitions live beside the
// readings (measurement alert_events, tags device_id and site, fields
// value, alert_id, transition). The raw tier read them as readings: a
// metric named "value" mixed each alert's value into the device's history
// (the rollup leaves alert_events out, so the tiers disagreed), and
// metric=transition, a string, failed the query with a 500.
func TestAlertEventsAreNotReadings(t *testing.T) {
	f := newFixture(t)
	var pts []pt
	for i := 0; i < 6; i++ {
		pts = append(pts, pt{typ: "probe", device: "ax-1", site: "as", domain: "roads", t: t0.Add(time.Duration(i) * 10 * time.Minute), v: 10})
	}
	f.write(t, pts, "value")
	l := store.StartLine(nil, DefaultAlertMeasurement)
	l.Tag("device_id", "ax-1")
	l.Tag("site", "as")
	l.Tag("state", "firing")
	l.Float("value", 1000)
	l.String("alert_id", "a1")
	l.String("transition", "fired")
	buf, _ := l.End(t0.Add(15 * time.Minute))
	require.NoError(t, f.raw.WriteLines(testCtx(t), buf, 1))

	v := url.Values{"metric": {"value"}, "agg": {"max"}, "every": {"1h"},
		"start": {t0.Format(time.RFC3339)}, "stop": {t0.Add(time.Hour).Format(time.RFC3339)}}
	a := f.collect(t, v)
	require.Equal(t, []Series{{Key: "ax-1", Points: []Sample{{t0, 10}}}}, a.Series)

	v.Set("metric", "transition")
	v.Set("agg", "count")
	a = f.collect(t, v)
	require.Empty(t, a.Series)
}

// TestAvailabilityOfADeviceThatMoved: the devices of a site come from the
// registry (where they are now); their readings carry the site they had
// when taken. Filtering the readings by site counted a device that moved
// in as missing before its move.
func TestAvailabilityOfADeviceThatMoved(t *testing.T) {
	f := newFixture(t)
	var pts []pt
	for i := 0; i < 24*6; i++ {
		site := "old-site"
		if i >= 12*6 {
			site = "new-site"
		}
		pts = append(pts, pt{typ: "probe", device: "mv-1", site: site, domain: "roads", t: t0.Add(time.Duration(i) * 10 * time.Minute), v: 1})
		// Another device still at the old site is not reported.
		pts = append(pts, pt{typ: "probe", device: "st-1", site: "old-site", domain: "roads", t: t0.Add(time.Duration(i) * 10 * time.Minute), v: 1})
	}
	f.write(t, pts, "load")
	q, err := f.svc.ParseAvailability(url.Values{"site": {"new-site"}, "start": {t0.Format(time.RFC3339)},
		"stop": {t0.Add(24 * time.Hour).Format(time.RFC3339)}})
	require.NoError(t, err)
	q.Devices = []ExpectedDevice{{"mv-1", 10 * time.Minute}}
	got, err := f.svc.Availability(testCtx(t), q)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, int64(144), got[0].Expected)
	require.Equal(t, int64(144), got[0].Received, "readings taken before the move count")
}
