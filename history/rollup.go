package history

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api/query"
	"github.com/infrawatch/infrawatch/store"
)

// Stats are the values kept per metric, series and hour in the rollup tier,
// in the tag "stat". sum rides along with mean so that means over several
// hours or series can be weighted exactly (sum of sums / sum of counts).
var Stats = []string{"mean", "min", "max", "sum", "count"}

// RunRollup keeps the rollup tier up to date until ctx ends: it makes sure
// the retention policies exist, rolls up the last RollupBackfill of closed
// hours, then every RollupInterval recomputes the hours from the last
// successful run (at least RollupLookback back) up to the last closed hour.
// A failed run is logged and retried at the next tick. It returns ctx's
// error. Without a RollupWriter it returns at once with nil.
func (s *Service) RunRollup(ctx context.Context) error {
	if !s.RollupEnabled() {
		return nil
	}
	retentionDone := false
	// done is the end of the last successful run: later runs start at or
	// before it so a failure leaves no gap.
	done := s.opts.Now().UTC().Truncate(time.Hour).Add(-s.opts.RollupBackfill)
	t := time.NewTicker(s.opts.RollupInterval)
	defer t.Stop()
	for {
		if !retentionDone {
			if err := s.EnsureRetention(ctx); err != nil {
				s.log.Warn("cannot set up history retention policies, retrying", "err", err)
			} else {
				retentionDone = true
			}
		}
		now := s.opts.Now().UTC().Truncate(time.Hour)
		start := now.Add(-s.opts.RollupLookback)
		if done.Before(start) {
			start = done
		}
		if start.Before(now) {
			if n, err := s.Rollup(ctx, start, now); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s.log.Warn("history rollup failed, retrying at next tick", "start", start, "stop", now, "err", err)
			} else {
				done = now
				s.log.Debug("history rollup done", "start", start, "stop", now, "points", n)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Rollup computes the hourly mean, min, max, sum and count of every metric
// of every series for the whole hours in [start, stop) (stop is clamped to
// the last closed hour) and writes them to the rollup tier. Writing the same
// hour again overwrites it with the same or, after late readings, newer
// values: Rollup is idempotent. On success the rollup horizon moves to stop:
// call it for older ranges only once everything between them and the
// horizon is rolled up. It returns the number of points written.
func (s *Service) Rollup(ctx context.Context, start, stop time.Time) (int, error) {
	if !s.RollupEnabled() {
		return 0, fmt.Errorf("history rollup: no RollupWriter configured")
	}
	start = start.UTC().Truncate(time.Hour)
	if closed := s.opts.Now().UTC().Truncate(time.Hour); stop.After(closed) {
		stop = closed
	}
	stop = stop.UTC().Truncate(time.Hour)
	total := 0
	for from := start; from.Before(stop); from = from.Add(DefaultRollupChunk) {
		to := from.Add(DefaultRollupChunk)
		if to.After(stop) {
			to = stop
		}
		n, err := s.rollupChunk(ctx, from, to)
		total += n
		if err != nil {
			s.metrics.rollupRuns.WithLabelValues("error").Inc()
			return total, err
		}
	}
	s.metrics.rollupRuns.WithLabelValues("ok").Inc()
	if stop.After(start) {
		s.advanceHorizon(stop)
		s.metrics.rollupLast.Set(float64(s.RolledUpTo().Unix()))
	}
	return total, nil
}

// RollupFlux returns the queries that compute the rollup of [start, stop):
// with the field types known (1.x), one over the numeric fields as they are
// and one over the boolean fields converted to 0/1; without, one query that
// converts every value (toFloat, several times slower).
func (s *Service) RollupFlux(start, stop time.Time, si *schemaInfo) []string {
	head := func(b *strings.Builder) {
		fmt.Fprintf(b, "data = from(bucket: %s)\n  |> range(start: %s, stop: %s)\n",
			store.FluxString(s.opts.Bucket), store.FluxTime(start), store.FluxTime(stop))
		if len(s.opts.RollupExclude) > 0 {
			b.WriteString("  |> filter(fn: (r) => ")
			for i, m := range s.opts.RollupExclude {
				if i > 0 {
					b.WriteString(" and ")
				}
				b.WriteString("r._measurement != ")
				b.WriteString(store.FluxString(m))
			}
			b.WriteString(")\n")
		}
	}
	tail := func(b *strings.Builder) string {
		b.WriteString(stopFilter(stop))
		b.WriteString("  |> window(every: 1h)\n")
		for _, st := range Stats {
			fmt.Fprintf(b, "data |> %s() |> yield(name: %q)\n", st, st)
		}
		return b.String()
	}
	pair := func(k fieldKey) string {
		return "r._measurement == " + store.FluxString(k.measurement) + " and r._field == " + store.FluxString(k.field)
	}
	var b strings.Builder
	head(&b)
	if si == nil {
		// Booleans roll up as 0/1: their mean is the share of true.
		b.WriteString("  |> toFloat()\n")
		return []string{tail(&b)}
	}
	if skip := append(append([]fieldKey(nil), si.bools...), si.strings...); len(skip) > 0 {
		b.WriteString("  |> filter(fn: (r) => ")
		for i, k := range skip {
			if i > 0 {
				b.WriteString(" and ")
			}
			b.WriteString("not (" + pair(k) + ")")
		}
		b.WriteString(")\n")
	}
	out := []string{tail(&b)}
	if len(si.bools) > 0 {
		var bb strings.Builder
		head(&bb)
		bb.WriteString("  |> filter(fn: (r) => ")
		for i, k := range si.bools {
			if i > 0 {
				bb.WriteString(" or ")
			}
			bb.WriteString("(" + pair(k) + ")")
		}
		bb.WriteString(")\n  |> toFloat()\n")
		out = append(out, tail(&bb))
	}
	return out
}

// skipColumns are the columns of a rollup record that are not tags.
var skipColumns = map[string]bool{"result": true, "table": true, "_start": true, "_stop": true,
	"_time": true, "_value": true, "_field": true, "_measurement": true, "stat": true}

func (s *Service) rollupChunk(ctx context.Context, start, stop time.Time) (int, error) {
	total := 0
	for _, flux := range s.RollupFlux(start, stop, s.fieldSchema(ctx)) {
		n, err := s.rollupQuery(ctx, flux, start, stop)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (s *Service) rollupQuery(ctx context.Context, flux string, start, stop time.Time) (int, error) {
	res, err := s.opts.Store.Query(ctx, flux)
	if err != nil {
		return 0, fmt.Errorf("query rollup of %s..%s: %w", store.FluxTime(start), store.FluxTime(stop), err)
	}
	defer res.Close()
	var (
		buf     []byte
		pending int
		written int
		tags    []store.Tag
	)
	flush := func() error {
		if pending == 0 {
			return nil
		}
		if err := s.opts.RollupWriter.WriteLines(ctx, buf, pending); err != nil {
			return fmt.Errorf("write rollup of %s..%s to %s: %w", store.FluxTime(start), store.FluxTime(stop), s.opts.RollupBucket, err)
		}
		written += pending
		s.metrics.rollupPoints.Add(float64(pending))
		buf, pending = buf[:0], 0
		return nil
	}
	for res.Next() {
		rec := res.Record()
		v, ok := number(rec, "_value")
		if !ok {
			continue
		}
		tags = recordTags(rec, tags[:0])
		tags = append(tags, store.Tag{Key: "stat", Value: rec.Result()})
		slices.SortFunc(tags, func(a, b store.Tag) int { return strings.Compare(a.Key, b.Key) })
		l := store.StartLine(buf, rec.Measurement())
		for _, t := range tags {
			l.Tag(t.Key, t.Value)
		}
		l.Float(rec.Field(), v)
		var added bool
		if buf, added = l.End(rec.Start()); added {
			pending++
		}
		if pending >= DefaultRollupBatch {
			if err := flush(); err != nil {
				return written, err
			}
		}
	}
	if err := res.Err(); err != nil {
		return written, fmt.Errorf("read rollup of %s..%s: %w", store.FluxTime(start), store.FluxTime(stop), err)
	}
	return written, flush()
}

// recordTags appends the string columns of rec that are tags.
func recordTags(rec *query.FluxRecord, dst []store.Tag) []store.Tag {
	for k, v := range rec.Values() {
		if skipColumns[k] {
			continue
		}
		if sv, ok := v.(string); ok && sv != "" {
			dst = append(dst, store.Tag{Key: k, Value: sv})
		}
	}
	return dst
}

// EnsureRetention creates (or alters) the retention policies of the tiers
// on InfluxDB 1.x through its /query endpoint: the rollup policy with
// RollupRetention (infinite when zero) and, when RawRetention is set, the
// raw policy. It does nothing without InfluxURL or when the Store reports a
// 2.x server, where buckets and their retention are created with the
// influx CLI. It is idempotent.
func (s *Service) EnsureRetention(ctx context.Context) error {
	if s.opts.InfluxURL == "" {
		return nil
	}
	if v, ok := s.opts.Store.(interface{ IsV1() bool }); ok && !v.IsV1() {
		s.log.Info("influxdb 2.x: create the rollup bucket and retention with the influx CLI", "bucket", s.opts.RollupBucket)
		return nil
	}
	if s.RollupEnabled() {
		db, rp, _ := strings.Cut(s.opts.RollupBucket, "/")
		if rp == "" {
			return fmt.Errorf("history: RollupBucket %q must be \"db/rp\" on InfluxDB 1.x", s.opts.RollupBucket)
		}
		if err := s.ensureRP(ctx, db, rp, s.opts.RollupRetention); err != nil {
			return err
		}
	}
	if s.opts.RawRetention > 0 {
		db, rp, _ := strings.Cut(s.opts.Bucket, "/")
		if rp == "" {
			rp = "autogen"
		}
		if err := s.ensureRP(ctx, db, rp, s.opts.RawRetention); err != nil {
			return err
		}
	}
	return nil
}

// influxIdent quotes an InfluxQL identifier.
func influxIdent(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// influxDuration renders a retention duration; InfluxQL's minimum is 1h.
func influxDuration(d time.Duration) string {
	if d == 0 {
		return "INF"
	}
	if d < time.Hour {
		d = time.Hour
	}
	return fmt.Sprintf("%dm", int64(d/time.Minute))
}

func (s *Service) ensureRP(ctx context.Context, db, rp string, d time.Duration) error {
	create := fmt.Sprintf("CREATE RETENTION POLICY %s ON %s DURATION %s REPLICATION 1",
		influxIdent(rp), influxIdent(db), influxDuration(d))
	err := s.influxQL(ctx, create)
	if err != nil && strings.Contains(err.Error(), "already exists") {
		err = s.influxQL(ctx, fmt.Sprintf("ALTER RETENTION POLICY %s ON %s DURATION %s",
			influxIdent(rp), influxIdent(db), influxDuration(d)))
	}
	if err != nil {
		return fmt.Errorf("ensure retention policy %s on %s (%s): %w", rp, db, influxDuration(d), err)
	}
	s.log.Info("history retention policy set", "database", db, "retention_policy", rp, "duration", influxDuration(d))
	return nil
}

// influxQL runs one statement through 1.x's /query endpoint.
func (s *Service) influxQL(ctx context.Context, stmt string) error {
	raw, err := s.influxQLBody(ctx, stmt)
	var result struct {
		Error   string `json:"error"`
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
	}
	if jerr := json.Unmarshal(raw, &result); jerr != nil {
		if err != nil {
			return err
		}
		return fmt.Errorf("decode answer: %w", jerr)
	}
	if result.Error != "" {
		return fmt.Errorf("%s", result.Error)
	}
	for _, r := range result.Results {
		if r.Error != "" {
			return fmt.Errorf("%s", r.Error)
		}
	}
	return err
}
