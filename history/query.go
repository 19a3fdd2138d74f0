package history

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/influxdata/influxdb-client-go/v2/api/query"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

// Agg is an aggregate function of a window.
type Agg string

// The aggregates /history offers.
const (
	AggMean  Agg = "mean"
	AggMin   Agg = "min"
	AggMax   Agg = "max"
	AggSum   Agg = "sum"
	AggCount Agg = "count"
	AggLast  Agg = "last"
	AggP95   Agg = "p95"
)

// Aggs lists every Agg, in documentation order.
var Aggs = []Agg{AggMean, AggMin, AggMax, AggSum, AggCount, AggLast, AggP95}

// GroupBy is what a series stands for.
type GroupBy string

// Groupings: one series per device, site, domain or device type.
const (
	ByDevice GroupBy = "device"
	BySite   GroupBy = "site"
	ByDomain GroupBy = "domain"
	ByType   GroupBy = "type"
)

// column is the InfluxDB column holding the grouping's key.
func (g GroupBy) column() string {
	switch g {
	case BySite:
		return "site"
	case ByDomain:
		return "domain"
	case ByType:
		return "_measurement"
	default:
		return "device_id"
	}
}

// Label is the name of the key in answers (CSV header, JSON): device_id,
// site, domain or type.
func (g GroupBy) Label() string {
	if g == ByType {
		return "type"
	}
	return g.column()
}

// Filter selects series by exact tag match; empty fields match all.
type Filter struct {
	DeviceID string
	Site     string
	Domain   string
	Type     string
}

// Query is one validated history question.
type Query struct {
	Metric  string
	Filter  Filter
	GroupBy GroupBy
	Start   time.Time // inclusive
	Stop    time.Time // exclusive
	Every   time.Duration
	Agg     Agg
	// Tier forces a tier: "" (auto), TierRaw or TierRollup.
	Tier string
	// MaxPoints caps the answer; exceeding it fails with a *ParamError.
	MaxPoints int
}

// ParamError is a request parameter that is invalid or asks for too much:
// a 400 naming the parameter.
type ParamError struct {
	Param   string
	Message string
	Err     error // a sentinel such as ErrTooManyPoints, or nil
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Message }

// Unwrap returns the sentinel, if any.
func (e *ParamError) Unwrap() error { return e.Err }

// ErrTooManyPoints is wrapped by the *ParamError of an answer over its cap.
var ErrTooManyPoints = errors.New("too many points")

var (
	// MetricPattern is the rule for metric names (SPEC: MQTT payloads).
	metricRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	// durRe accepts a positive integer and one unit; Flux never sees the
	// text, only the duration Go parsed.
	durRe = regexp.MustCompile(`^([1-9][0-9]{0,8})(ms|s|m|h|d|w)$`)
)

// parseDuration reads "90s", "15m", "1h", "7d", "2w".
func parseDuration(s string) (time.Duration, bool) {
	m := durRe.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, false
	}
	unit := map[string]time.Duration{"ms": time.Millisecond, "s": time.Second, "m": time.Minute,
		"h": time.Hour, "d": 24 * time.Hour, "w": 7 * 24 * time.Hour}[m[2]]
	if n > int64((1<<62)/unit) {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// ParseTime reads an RFC 3339 time, "now", or a time relative to now such
// as "-24h", "-7d" (units of parseDuration).
func ParseTime(s string, now time.Time) (time.Time, bool) {
	switch {
	case s == "now":
		return now, true
	case strings.HasPrefix(s, "-"):
		d, ok := parseDuration(s[1:])
		return now.Add(-d), ok
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// validTagValue accepts a site, domain or type given as a filter: printable,
// no longer than the registry allows. It is spliced into Flux only through
// store.FluxString.
func validTagValue(s string) bool {
	if s == "" || len(s) > 128 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func parseFilter(v url.Values, errs map[string]string) Filter {
	f := Filter{DeviceID: v.Get("device_id"), Site: v.Get("site"), Domain: v.Get("domain"), Type: v.Get("type")}
	if f.DeviceID != "" && !telemetry.ValidID(f.DeviceID) {
		errs["device_id"] = "must match ^[A-Za-z0-9_-]{1,64}$"
	}
	for name, val := range map[string]string{"site": f.Site, "domain": f.Domain, "type": f.Type} {
		if val != "" && !validTagValue(val) {
			errs[name] = "must be 1 to 128 printable characters"
		}
	}
	return f
}

// minTime and maxTime bound the times InfluxDB stores (int64 ns), whole
// seconds inside.
var (
	minTime = time.Unix(math.MinInt64/int64(time.Second)+1, 0).UTC()
	maxTime = time.Unix(math.MaxInt64/int64(time.Second), 0).UTC()
)

func parseRange(v url.Values, now time.Time, errs map[string]string) (start, stop time.Time) {
	start, stop = now.Add(-24*time.Hour), now
	if s := v.Get("start"); s != "" {
		var ok bool
		if start, ok = ParseTime(s, now); !ok {
			errs["start"] = "must be RFC 3339, \"now\" or relative like -24h, -7d"
		}
	}
	if s := v.Get("stop"); s != "" {
		var ok bool
		if stop, ok = ParseTime(s, now); !ok {
			errs["stop"] = "must be RFC 3339, \"now\" or relative like -1h"
		}
	}
	// InfluxDB keeps times as int64 nanoseconds: a range outside them is
	// its error (a 500), and a span over 292 years no time.Duration holds.
	for name, t := range map[string]time.Time{"start": start, "stop": stop} {
		if errs[name] == "" && (t.Before(minTime) || t.After(maxTime)) {
			errs[name] = "must be between " + minTime.Format(time.RFC3339) + " and " + maxTime.Format(time.RFC3339)
		}
	}
	if errs["start"] == "" && errs["stop"] == "" && !start.Before(stop) {
		errs["start"] = "must be before stop"
	}
	return start.UTC(), stop.UTC()
}

// ParseQuery reads and validates /history parameters: metric (required),
// device_id, site, domain, type, group_by (device|site|domain|type, default
// device), start (default -24h), stop (default now), every (default 1h),
// agg (default mean), tier (auto|raw|rollup_1h). export selects the CSV
// point cap. Errors are a ValidationErrors naming every bad parameter.
func (s *Service) ParseQuery(v url.Values, export bool) (Query, error) {
	errs := map[string]string{}
	q := Query{Metric: v.Get("metric"), GroupBy: GroupBy(v.Get("group_by")), Agg: Agg(v.Get("agg")),
		Tier: v.Get("tier"), MaxPoints: s.opts.MaxPoints}
	if export {
		q.MaxPoints = s.opts.MaxExportPoints
	}
	switch {
	case q.Metric == "":
		errs["metric"] = "is required"
	case !metricRe.MatchString(q.Metric):
		errs["metric"] = "must match ^[a-z][a-z0-9_]{0,63}$"
	}
	q.Filter = parseFilter(v, errs)
	switch q.GroupBy {
	case "":
		q.GroupBy = ByDevice
	case ByDevice, BySite, ByDomain, ByType:
	default:
		errs["group_by"] = "must be device, site, domain or type"
	}
	if q.Agg == "" {
		q.Agg = AggMean
	} else if !validAgg(q.Agg) {
		errs["agg"] = "must be mean, min, max, sum, count, last or p95"
	}
	switch q.Tier {
	case "", "auto":
		q.Tier = ""
	case TierRaw, TierRollup:
	default:
		errs["tier"] = "must be auto, raw or rollup_1h"
	}
	q.Start, q.Stop = parseRange(v, s.opts.Now(), errs)
	q.Every = time.Hour
	if e := v.Get("every"); e != "" {
		d, ok := parseDuration(e)
		if !ok || d < time.Second {
			errs["every"] = "must be a duration of at least 1s like 1m, 15m, 1h, 1d"
		} else {
			q.Every = d
		}
	}
	if len(errs) == 0 {
		if n := windows(q.Start, q.Stop, q.Every); n > int64(s.opts.MaxWindows) {
			errs["every"] = fmt.Sprintf("%s over %s is %d windows per series, more than %d: use a larger every or a shorter range",
				fmtDuration(q.Every), q.Stop.Sub(q.Start), n, s.opts.MaxWindows)
		}
	}
	if len(errs) > 0 {
		return Query{}, ValidationErrors(errs)
	}
	return q, nil
}

func validAgg(a Agg) bool {
	for _, x := range Aggs {
		if a == x {
			return true
		}
	}
	return false
}

// windows counts the epoch-aligned windows of size every that [start, stop)
// touches.
func windows(start, stop time.Time, every time.Duration) int64 {
	// In uint64: a span of more than 292 years overflows a Duration (it
	// saturated, then wrapped negative and passed the cap).
	d := uint64(every)
	span := uint64(stop.UnixNano() - start.UnixNano()) // wraps to the exact difference
	lead := uint64(start.UnixNano() - epochTruncate(start, every).UnixNano())
	n := span / d
	rest := span%d + lead // < 2d: no overflow
	n += rest / d
	if rest%d != 0 {
		n++
	}
	return int64(n)
}

// epochTruncate rounds t down to a multiple of d since the Unix epoch, as
// Flux aligns its windows. time.Time.Truncate counts from year 1 instead:
// the same for divisors of a day, not for 5h, 7h or 1w, where a split made
// with it falls inside a Flux window.
func epochTruncate(t time.Time, d time.Duration) time.Time {
	ns := t.UnixNano()
	r := ns % int64(d)
	if r < 0 {
		r += int64(d)
	}
	if ns < math.MinInt64+r {
		return time.Unix(0, math.MinInt64).UTC()
	}
	return time.Unix(0, ns-r).UTC()
}

// ValidationErrors maps each bad parameter to what is wrong with it.
type ValidationErrors map[string]string

func (v ValidationErrors) Error() string {
	parts := make([]string, 0, len(v))
	for _, k := range sortedKeys(v) {
		parts = append(parts, k+": "+v[k])
	}
	return "invalid parameters: " + strings.Join(parts, "; ")
}

// Point is one window of one series.
type Point struct {
	// Key is the series: a device id, site, domain or type.
	Key   string
	Time  time.Time // window start
	Value float64
}

// Plan is a Query with the tiers that answer it, chosen by Prepare.
type Plan struct {
	Query  Query
	Source string // TierRaw, TierRollup or TierMixed
	parts  []part
}

type part struct {
	tier        string
	start, stop time.Time
}

// rollupAgg reports whether agg can be computed from hourly mean (as sum
// and count), min, max and count.
func rollupAgg(a Agg) bool {
	switch a {
	case AggMean, AggMin, AggMax, AggSum, AggCount:
		return true
	}
	return false
}

// Prepare chooses the tiers for q. The rollup answers when every is a whole
// number of hours, the aggregate composes from hourly values, start is on
// an hour, and the range is rolled up; windows after the rollup's horizon
// come from raw data (source "rollup_1h+raw"). The split falls on a window
// boundary, so no window mixes tiers.
func (s *Service) Prepare(q Query) (Plan, error) {
	eligible := s.RollupEnabled() && q.Every%time.Hour == 0 && rollupAgg(q.Agg) && q.Start.Equal(q.Start.Truncate(time.Hour))
	raw := Plan{Query: q, Source: TierRaw, parts: []part{{TierRaw, q.Start, q.Stop}}}
	switch q.Tier {
	case TierRaw:
		return raw, nil
	case TierRollup:
		// The rollup's last hour holds readings up to its end: a stop inside
		// it would count readings after stop.
		if !eligible || !q.Stop.Equal(q.Stop.Truncate(time.Hour)) {
			return Plan{}, ValidationErrors{"tier": "rollup_1h needs the rollup enabled, every a multiple of 1h, start and stop on whole hours and agg mean, min, max, sum or count"}
		}
		return Plan{Query: q, Source: TierRollup, parts: []part{{TierRollup, q.Start, q.Stop}}}, nil
	}
	horizon := s.RolledUpTo()
	if !eligible || horizon.IsZero() {
		return raw, nil
	}
	if !q.Stop.After(horizon) && q.Stop.Equal(q.Stop.Truncate(time.Hour)) {
		return Plan{Query: q, Source: TierRollup, parts: []part{{TierRollup, q.Start, q.Stop}}}, nil
	}
	end := q.Stop
	if horizon.Before(end) {
		end = horizon
	}
	boundary := epochTruncate(end, q.Every)
	if !boundary.After(q.Start) {
		return raw, nil
	}
	return Plan{Query: q, Source: TierMixed, parts: []part{{TierRollup, q.Start, boundary}, {TierRaw, boundary, q.Stop}}}, nil
}

// Flux returns the queries of the plan, one per part, for logs and docs.
func (s *Service) Flux(p Plan) []string {
	out := make([]string, 0, len(p.parts))
	si := s.cachedSchema()
	for _, pt := range p.parts {
		out = append(out, s.flux(p.Query, pt, si == nil || si.isBool(p.Query.Metric)))
	}
	return out
}

// fmtDuration renders a Go duration as a Flux duration literal.
func fmtDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
}

// stopFilter drops points at the range's stop: InfluxDB 1.8's storage
// returns them (its range is inclusive), 2.x does not. It is a filter of its
// own, after the tag filter, so that 1.8 still pushes the tag filter down to
// storage.
func stopFilter(stop time.Time) string {
	return "  |> filter(fn: (r) => r._time < " + store.FluxTime(stop) + ")\n"
}

// tagPredicate is the Flux filter on tags; values are escaped string
// literals.
func tagPredicate(f Filter) string {
	var b strings.Builder
	for _, c := range []struct{ col, val string }{
		{"_measurement", f.Type}, {"device_id", f.DeviceID}, {"site", f.Site}, {"domain", f.Domain},
	} {
		if c.val != "" {
			b.WriteString(" and r.")
			b.WriteString(c.col)
			b.WriteString(" == ")
			b.WriteString(store.FluxString(c.val))
		}
	}
	return b.String()
}

// flux builds the query of one part; convert adds toFloat() for boolean
// (or unknown) fields.
func (s *Service) flux(q Query, pt part, convert bool) string {
	var b strings.Builder
	key := store.FluxString(q.GroupBy.column())
	every := fmtDuration(q.Every)
	bucket := s.opts.Bucket
	if pt.tier == TierRollup {
		bucket = s.opts.RollupBucket
	}
	fmt.Fprintf(&b, "from(bucket: %s)\n  |> range(start: %s, stop: %s)\n", store.FluxString(bucket), store.FluxTime(pt.start), store.FluxTime(pt.stop))
	if pt.tier == TierRollup {
		stat, fn := string(q.Agg), string(q.Agg)
		switch q.Agg {
		case AggMean:
			fmt.Fprintf(&b, "  |> filter(fn: (r) => r._field == %s and (r.stat == \"sum\" or r.stat == \"count\")%s)\n", store.FluxString(q.Metric), tagPredicate(q.Filter))
			b.WriteString(stopFilter(pt.stop))
			fmt.Fprintf(&b, "  |> group(columns: [%s, \"stat\"])\n", key)
			fmt.Fprintf(&b, "  |> aggregateWindow(every: %s, fn: sum, createEmpty: false, timeSrc: \"_start\")\n", every)
			b.WriteString("  |> pivot(rowKey: [\"_time\"], columnKey: [\"stat\"], valueColumn: \"_value\")\n")
			return b.String()
		case AggCount:
			fn = "sum" // counts of hours add up
		}
		fmt.Fprintf(&b, "  |> filter(fn: (r) => r._field == %s and r.stat == %s%s)\n", store.FluxString(q.Metric), store.FluxString(stat), tagPredicate(q.Filter))
		b.WriteString(stopFilter(pt.stop))
		fmt.Fprintf(&b, "  |> group(columns: [%s])\n", key)
		fmt.Fprintf(&b, "  |> aggregateWindow(every: %s, fn: %s, createEmpty: false, timeSrc: \"_start\")\n", every, fn)
		return b.String()
	}
	// Alert transitions share the bucket and device_id, site tags with the
	// readings; their fields (value, strings) are not readings.
	fmt.Fprintf(&b, "  |> filter(fn: (r) => r._field == %s and r._measurement != %s%s)\n",
		store.FluxString(q.Metric), store.FluxString(DefaultAlertMeasurement), tagPredicate(q.Filter))
	b.WriteString(stopFilter(pt.stop))
	if convert {
		// Booleans count as 0/1, so mean is the share of true.
		b.WriteString("  |> toFloat()\n")
	}
	fmt.Fprintf(&b, "  |> group(columns: [%s])\n", key)
	switch q.Agg {
	case AggP95:
		// Flux 0.65's quantile needs a method; exact_selector returns a
		// value that was measured.
		fmt.Fprintf(&b, "  |> window(every: %s)\n", every)
		b.WriteString("  |> quantile(q: 0.95, method: \"exact_selector\")\n")
		b.WriteString("  |> duplicate(column: \"_start\", as: \"_time\")\n")
		b.WriteString("  |> window(every: inf)\n")
		return b.String()
	case AggLast:
		// Grouping concatenates series; last must mean latest in time.
		b.WriteString("  |> sort(columns: [\"_time\"])\n")
	}
	fmt.Fprintf(&b, "  |> aggregateWindow(every: %s, fn: %s, createEmpty: false, timeSrc: \"_start\")\n", every, q.Agg)
	return b.String()
}

// Exec runs the plan and calls emit for each point: one series after the
// other, in time order within a series (with TierMixed, the rollup part of
// every series comes before the raw part). It stops at emit's first error
// and returns it. It fails with a *ParamError wrapping ErrTooManyPoints
// once the answer passes Query.MaxPoints.
func (s *Service) Exec(ctx context.Context, p Plan, emit func(Point) error) error {
	start := s.opts.Now()
	n := 0
	for _, pt := range p.parts {
		if err := s.execPart(ctx, p.Query, pt, &n, emit); err != nil {
			return err
		}
	}
	s.metrics.queryDuration.WithLabelValues(p.Source).Observe(s.opts.Now().Sub(start).Seconds())
	return nil
}

func (s *Service) execPart(ctx context.Context, q Query, pt part, n *int, emit func(Point) error) error {
	convert := true
	if pt.tier == TierRaw {
		si := s.fieldSchema(ctx)
		convert = si == nil || si.isBool(q.Metric)
	}
	flux := s.flux(q, pt, convert)
	res, err := s.opts.Store.Query(ctx, flux)
	if err != nil {
		return fmt.Errorf("query %s history of %s: %w", pt.tier, q.Metric, err)
	}
	defer res.Close()
	col := q.GroupBy.column()
	for res.Next() {
		rec := res.Record()
		p := Point{Time: rec.Time().UTC()}
		p.Key, _ = rec.ValueByKey(col).(string)
		var ok bool
		if pt.tier == TierRollup && q.Agg == AggMean {
			sum, ok1 := number(rec, "sum")
			cnt, ok2 := number(rec, "count")
			if !ok1 || !ok2 || cnt == 0 {
				continue
			}
			p.Value, ok = sum/cnt, true
		} else {
			p.Value, ok = number(rec, "_value")
		}
		if !ok {
			continue
		}
		*n++
		if q.MaxPoints > 0 && *n > q.MaxPoints {
			return &ParamError{Param: "every", Err: ErrTooManyPoints, Message: fmt.Sprintf(
				"the answer has more than %d points: use a larger every, a shorter range (start, stop) or a narrower filter", q.MaxPoints)}
		}
		if err := emit(p); err != nil {
			return err
		}
	}
	if err := res.Err(); err != nil {
		return fmt.Errorf("read %s history of %s: %w", pt.tier, q.Metric, err)
	}
	return nil
}

// number reads a numeric column of a record as float64.
func number(rec *query.FluxRecord, col string) (float64, bool) {
	switch v := rec.ValueByKey(col).(type) {
	case float64:
		return v, true
	case int64:
		return float64(v), true
	case uint64:
		return float64(v), true
	case bool:
		if v {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}
