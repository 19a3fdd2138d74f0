package history

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type fakeQuerier struct{ Querier }

type fakeWriter struct{}

func (fakeWriter) WriteLines(context.Context, []byte, int) error { return nil }

func pureService(t *testing.T, mod ...func(*Options)) *Service {
	t.Helper()
	o := Options{Store: fakeQuerier{}, Bucket: "infrawatch", RollupWriter: fakeWriter{},
		Now: func() time.Time { return time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC) }}
	for _, m := range mod {
		m(&o)
	}
	s, err := New(o)
	require.NoError(t, err)
	return s
}

func TestParseQueryRejects(t *testing.T) {
	s := pureService(t)
	for _, tc := range []struct {
		query string
		param string
	}{
		{"", "metric"},
		{"metric=" + url.QueryEscape(`x") |> drop()`), "metric"},
		{"metric=Flow", "metric"},
		{"metric=flow&device_id=" + url.QueryEscape(`tc"1`), "device_id"},
		{"metric=flow&device_id=" + url.QueryEscape(`tc-1" or true or "`), "device_id"},
		{"metric=flow&site=" + url.QueryEscape("a\nb"), "site"},
		{"metric=flow&every=1h)%20|>%20drop(", "every"},
		{"metric=flow&every=-1h", "every"},
		{"metric=flow&every=1.5h", "every"},
		{"metric=flow&every=1y", "every"},
		{"metric=flow&every=0s", "every"},
		{"metric=flow&every=500ms", "every"},
		{"metric=flow&start=yesterday", "start"},
		{"metric=flow&start=-24x", "start"},
		{"metric=flow&stop=" + url.QueryEscape("2024-01-01T00:00:00Z) |> drop("), "stop"},
		{"metric=flow&start=-1h&stop=-2h", "start"},
		{"metric=flow&agg=median", "agg"},
		{"metric=flow&group_by=route", "group_by"},
		{"metric=flow&tier=cold", "tier"},
		// limits: 365 days of 1-minute windows, 2 years of hours
		{"metric=flow&start=-365d&every=1m", "every"},
		{"metric=flow&start=-730d&every=1h", "every"},
		// Times InfluxDB cannot represent (int64 ns: 1677..2262) reached it
		// and came back as a 500 ("cannot query an empty range"); a span
		// over 292 years overflowed the window count, which went negative
		// and passed the cap.
		{"metric=flow&start=1000-01-01T00:00:00Z&every=1d", "start"},
		{"metric=flow&stop=3000-01-01T00:00:00Z&every=1s", "stop"},
		{"metric=flow&start=1700-01-01T00:00:00Z&stop=2260-01-01T00:00:00Z&every=1s", "every"},
	} {
		v, err := url.ParseQuery(tc.query)
		require.NoError(t, err)
		_, err = s.ParseQuery(v, false)
		require.Error(t, err, tc.query)
		var ve ValidationErrors
		require.ErrorAs(t, err, &ve, tc.query)
		require.Contains(t, ve, tc.param, "%s: %v", tc.query, err)
	}
}

func TestParseQueryDefaultsAndRelative(t *testing.T) {
	s := pureService(t)
	now := s.opts.Now()
	q, err := s.ParseQuery(url.Values{"metric": {"flow_vph"}}, false)
	require.NoError(t, err)
	require.Equal(t, Query{Metric: "flow_vph", GroupBy: ByDevice, Agg: AggMean, Every: time.Hour,
		Start: now.Add(-24 * time.Hour), Stop: now, MaxPoints: DefaultMaxPoints}, q)

	q, err = s.ParseQuery(url.Values{"metric": {"u"}, "start": {"-7d"}, "stop": {"now"}, "every": {"1d"},
		"agg": {"p95"}, "group_by": {"site"}, "site": {`dc "1"`}}, true)
	require.NoError(t, err)
	require.Equal(t, now.Add(-7*24*time.Hour), q.Start)
	require.Equal(t, 24*time.Hour, q.Every)
	require.Equal(t, DefaultMaxExportPoints, q.MaxPoints)

	// A site with quotes is legal text: it reaches Flux only as an escaped
	// literal.
	p, err := s.Prepare(q)
	require.NoError(t, err)
	flux := s.Flux(p)[0]
	require.Contains(t, flux, `r.site == "dc \"1\""`)
	require.Contains(t, flux, `quantile(q: 0.95, method: "exact_selector")`)

	_, err = s.ParseQuery(url.Values{"metric": {"u"}, "start": {"2024-01-01T00:00:00Z"}, "stop": {"2024-01-08T00:00:00+01:00"}}, false)
	require.NoError(t, err)
}

func TestPrepareTiers(t *testing.T) {
	s := pureService(t)
	h := time.Date(2024, 1, 10, 0, 0, 0, 0, time.UTC)
	base := Query{Metric: "flow", GroupBy: BySite, Agg: AggMean, Every: time.Hour,
		Start: h.Add(-48 * time.Hour), Stop: h.Add(-24 * time.Hour)}
	with := func(f func(*Query)) Query { q := base; f(&q); return q }

	// Nothing rolled up yet: raw.
	p, err := s.Prepare(base)
	require.NoError(t, err)
	require.Equal(t, TierRaw, p.Source)

	s.advanceHorizon(h)
	for _, tc := range []struct {
		name string
		q    Query
		want string
	}{
		{"hourly mean before horizon", base, TierRollup},
		{"daily sum", with(func(q *Query) { q.Agg = AggSum; q.Every = 24 * time.Hour }), TierRollup},
		{"p95 needs raw", with(func(q *Query) { q.Agg = AggP95 }), TierRaw},
		{"last needs raw", with(func(q *Query) { q.Agg = AggLast }), TierRaw},
		{"15m windows", with(func(q *Query) { q.Every = 15 * time.Minute }), TierRaw},
		{"90m windows", with(func(q *Query) { q.Every = 90 * time.Minute }), TierRaw},
		{"start inside an hour", with(func(q *Query) { q.Start = q.Start.Add(time.Minute) }), TierRaw},
		{"stop after horizon", with(func(q *Query) { q.Stop = h.Add(90 * time.Minute) }), TierMixed},
		{"stop inside an hour", with(func(q *Query) { q.Stop = q.Stop.Add(time.Minute) }), TierMixed},
		{"all after horizon", with(func(q *Query) { q.Start = h; q.Stop = h.Add(time.Hour) }), TierRaw},
		{"forced raw", with(func(q *Query) { q.Tier = TierRaw }), TierRaw},
	} {
		p, err := s.Prepare(tc.q)
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.want, p.Source, tc.name)
		if tc.want == TierMixed {
			require.Len(t, p.parts, 2)
			require.Equal(t, p.parts[0].stop, p.parts[1].start)
			require.Equal(t, p.parts[0].stop, p.parts[0].stop.Truncate(tc.q.Every), "split on a window boundary")
		}
	}
	_, err = s.Prepare(with(func(q *Query) { q.Tier = TierRollup; q.Agg = AggP95 }))
	require.ErrorAs(t, err, new(ValidationErrors))

	// Without a rollup writer there is no rollup tier.
	s2 := pureService(t, func(o *Options) { o.RollupWriter = nil })
	s2.advanceHorizon(h)
	p, err = s2.Prepare(base)
	require.NoError(t, err)
	require.Equal(t, TierRaw, p.Source)
}

func TestOptionsValidate(t *testing.T) {
	_, err := New(Options{})
	require.ErrorContains(t, err, "Store")
	_, err = New(Options{Store: fakeQuerier{}, Bucket: `a"b`, RollupLookback: time.Minute, MaxPoints: -1, InfluxURL: "ftp://x"})
	for _, f := range []string{"Bucket", "RollupLookback", "MaxPoints", "InfluxURL"} {
		require.ErrorContains(t, err, f)
	}
	_, err = New(Options{Store: fakeQuerier{}, Bucket: "db/rp", RollupWriter: fakeWriter{}, RollupBucket: "db/rp"})
	require.ErrorContains(t, err, "RollupBucket")
}

func TestMergeIntervals(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	h := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }
	got := mergeIntervals([]Interval{{h(5), h(7)}, {h(-2), h(1)}, {h(6), h(8)}, {h(20), h(30)}, {h(3), h(3)}}, t0, h(24))
	require.Equal(t, []Interval{{h(0), h(1)}, {h(5), h(8)}, {h(20), h(24)}}, got)
}

func TestParseAvailability(t *testing.T) {
	s := pureService(t)
	q, err := s.ParseAvailability(url.Values{"site": {"s1"}, "start": {"-2d"},
		"exclude": {"2024-01-30T00:00:00Z/2024-01-30T02:00:00Z,2024-01-31T00:00:00Z/2024-01-31T01:00:00Z"}})
	require.NoError(t, err)
	require.Len(t, q.Exclude, 2)
	for _, bad := range []string{"2024-01-30T00:00:00Z", "2024-01-30T02:00:00Z/2024-01-30T00:00:00Z", `") |> drop()/x`} {
		_, err = s.ParseAvailability(url.Values{"exclude": {bad}})
		var ve ValidationErrors
		require.ErrorAs(t, err, &ve)
		require.Contains(t, ve, "exclude")
	}
	_, err = s.ParseAvailability(url.Values{"device_id": {`a"b`}})
	require.ErrorContains(t, err, "device_id")
	require.True(t, strings.Contains(s.AvailabilityFlux(q), `r.site == "s1"`))
}
