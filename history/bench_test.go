package history

import (
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/store"
	"github.com/stretchr/testify/require"
)

func benchEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkHourlySite answers "hourly mean of one site over the whole
// range" from the raw tier and from the rollup tier. Data: 1-minute readings
// of HISTORY_BENCH_DEVICES devices (default 100) in 10 sites over
// HISTORY_BENCH_DAYS days (default 7), written and rolled up before the
// timer starts:
//
//	go test -run '^$' -bench HourlySite -benchtime 20x ./history/
func BenchmarkHourlySite(b *testing.B) {
	devices, days := benchEnvInt("HISTORY_BENCH_DEVICES", 100), benchEnvInt("HISTORY_BENCH_DAYS", 7)
	f := newFixture(b)
	start := t0
	stop := start.Add(time.Duration(days) * 24 * time.Hour)
	setup := time.Now()
	var buf []byte
	n := 0
	for m := 0; m < days*24*60; m++ {
		ts := start.Add(time.Duration(m) * time.Minute)
		for d := 0; d < devices; d++ {
			l := store.StartLine(buf, "router")
			l.Tag("device_id", "rt-"+strconv.Itoa(d))
			l.Tag("domain", "network")
			l.Tag("site", "site-"+strconv.Itoa(d%10))
			l.Float("util_pct", float64((m*31+d*17)%1000)/10)
			buf, _ = l.End(ts)
			n++
		}
		if n >= 20000 {
			require.NoError(b, f.raw.WriteLines(testCtx(b), buf, n))
			buf, n = buf[:0], 0
		}
	}
	require.NoError(b, f.raw.WriteLines(testCtx(b), buf, n))
	written := time.Since(setup)
	rolled := time.Now()
	_, err := f.svc.Rollup(testCtx(b), start, stop)
	require.NoError(b, err)
	b.Logf("%d devices x %d days of 1-minute data: %d points written in %s, rolled up in %s",
		devices, days, devices*days*24*60, written.Round(time.Millisecond), time.Since(rolled).Round(time.Millisecond))

	v := url.Values{"metric": {"util_pct"}, "site": {"site-3"}, "group_by": {"site"}, "every": {"1h"}, "agg": {"mean"},
		"start": {start.Format(time.RFC3339)}, "stop": {stop.Format(time.RFC3339)}}
	for _, tier := range []string{TierRaw, TierRollup} {
		b.Run(tier, func(b *testing.B) {
			v.Set("tier", tier)
			q, err := f.svc.ParseQuery(v, false)
			require.NoError(b, err)
			p, err := f.svc.Prepare(q)
			require.NoError(b, err)
			require.Equal(b, tier, p.Source)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a, err := f.svc.Collect(testCtx(b), p)
				require.NoError(b, err)
				require.Len(b, a.Series[0].Points, days*24)
			}
		})
	}
}
