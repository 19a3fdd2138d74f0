package alerts

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

// Defaults of BacktestSource.
const (
	DefaultBacktestMaxReadings = 1_000_000
	DefaultBacktestMaxRange    = 31 * 24 * time.Hour
)

// ErrTooManyReadings means a backtest's selection holds more readings than
// BacktestSource.MaxReadings: the caller should narrow the rule's selector
// or the time range (an API answers 400).
var ErrTooManyReadings = errors.New("too many readings")

// Querier runs a Flux query; *store.Store implements it.
type Querier interface {
	Query(ctx context.Context, flux string) (*api.QueryTableResult, error)
}

// BacktestSource reads past readings from InfluxDB for backtests. Querier
// and Bucket are required.
type BacktestSource struct {
	Querier Querier
	// Bucket as the Querier expects it ("database" or "database/rp" on 1.x).
	Bucket string
	// Lookup is the device registry. When set, only readings of devices the
	// rule's selector matches today are replayed (as the engine would
	// evaluate them); it is required for selectors with tags, which
	// InfluxDB does not store.
	Lookup func(id string) (*telemetry.Device, bool)
	// MaxReadings bounds the values read from InfluxDB for one backtest
	// (default DefaultBacktestMaxReadings); beyond it the backtest fails
	// with ErrTooManyReadings rather than hold them all in memory.
	MaxReadings int
	// MaxRange bounds stop-start (default DefaultBacktestMaxRange).
	MaxRange time.Duration
}

// BacktestResult is what a rule would have raised over a time range.
type BacktestResult struct {
	// Intervals are the alerts, by device and then time; an interval whose
	// End is zero was still open at the last reading.
	Intervals []Interval
	// ReadingsScanned counts the values read from InfluxDB.
	ReadingsScanned int
}

// Backtest fetches the readings of rule's metric on the devices it selects
// over [start, stop) with one Flux query and replays them through the
// engine's state machine (see Backtest). The rule is validated as
// CreateRule would (severity defaults to warning), whatever its Enabled.
func (s BacktestSource) Backtest(ctx context.Context, rule Rule, start, stop time.Time) (BacktestResult, error) {
	if s.Querier == nil || s.Bucket == "" {
		return BacktestResult{}, errors.New("backtest: source needs a Querier and a Bucket")
	}
	maxReadings, maxRange := s.MaxReadings, s.MaxRange
	if maxReadings <= 0 {
		maxReadings = DefaultBacktestMaxReadings
	}
	if maxRange <= 0 {
		maxRange = DefaultBacktestMaxRange
	}
	rule = rule.withDefaults()
	if err := rule.Validate(); err != nil {
		return BacktestResult{}, err
	}
	errs := map[string]string{}
	switch {
	case start.IsZero():
		errs["start"] = "required"
	case stop.IsZero():
		errs["stop"] = "required"
	case !stop.After(start):
		errs["stop"] = "must be after start"
	case stop.Sub(start) > maxRange:
		errs["stop"] = fmt.Sprintf("the range may span at most %s", Duration(maxRange))
	}
	if len(rule.Selector.Tags) > 0 && s.Lookup == nil {
		errs["selector.tags"] = "backtests by tag need the device registry"
	}
	if len(errs) > 0 {
		return BacktestResult{}, &ValidationError{Fields: errs}
	}

	flux := backtestFlux(s.Bucket, rule, start, stop)
	res, err := s.Querier.Query(ctx, flux)
	if err != nil {
		return BacktestResult{}, fmt.Errorf("backtest: query %s: %w", s.Bucket, err)
	}
	defer res.Close()

	selected := map[string]bool{} // device id → the selector matches it today
	keep := func(id string) bool {
		if s.Lookup == nil {
			return true
		}
		ok, seen := selected[id]
		if !seen {
			dev, found := s.Lookup(id)
			ok = found && rule.Selector.Matches(dev)
			selected[id] = ok
		}
		return ok
	}
	var (
		out      BacktestResult
		readings []telemetry.Reading
		arena    []telemetry.Value // one allocation per block of values, not per reading
	)
	for res.Next() {
		rec := res.Record()
		if ts := rec.Time(); !ts.Before(stop) || ts.Before(start) {
			// InfluxDB 1.8 returns points at exactly stop although Flux's
			// range excludes it; [start, stop) is the contract here.
			continue
		}
		out.ReadingsScanned++
		if out.ReadingsScanned > maxReadings {
			return BacktestResult{}, fmt.Errorf("backtest: %w: more than %d values in range; narrow the selector or the time range",
				ErrTooManyReadings, maxReadings)
		}
		id, _ := rec.ValueByKey("device_id").(string)
		if id == "" || !keep(id) {
			continue
		}
		v, ok := store.RecordValue(rec)
		if !ok {
			continue // strings and nulls are not metrics
		}
		if len(arena) == cap(arena) {
			arena = make([]telemetry.Value, 0, 4096)
		}
		arena = append(arena, v)
		readings = append(readings, telemetry.Reading{DeviceID: id, Time: rec.Time(), Values: arena[len(arena)-1 : len(arena) : len(arena)]})
	}
	if err := res.Err(); err != nil {
		return BacktestResult{}, fmt.Errorf("backtest: read query result from %s: %w", s.Bucket, err)
	}
	if err := ctx.Err(); err != nil {
		return BacktestResult{}, fmt.Errorf("backtest: %w", err)
	}
	iv, err := Backtest(rule, readings)
	if err != nil {
		return BacktestResult{}, err
	}
	out.Intervals = iv
	return out, nil
}

// backtestFlux builds the query for a backtest: the selector's device ids,
// type (the measurement), domain and site become filters, every value
// quoted with store.FluxString; tags are matched afterwards through the
// registry. Only what Flux 0.65 (InfluxDB 1.8) has is used.
func backtestFlux(bucket string, rule Rule, start, stop time.Time) string {
	var conds []string
	sel := rule.Selector
	if sel.Type != "" {
		conds = append(conds, "r._measurement == "+store.FluxString(sel.Type))
	}
	if rule.Metric != "" {
		conds = append(conds, "r._field == "+store.FluxString(rule.Metric))
	}
	if sel.Domain != "" {
		conds = append(conds, "r.domain == "+store.FluxString(sel.Domain))
	}
	if sel.Site != "" {
		conds = append(conds, "r.site == "+store.FluxString(sel.Site))
	}
	if len(sel.DeviceIDs) > 0 {
		ids := append([]string(nil), sel.DeviceIDs...)
		sort.Strings(ids)
		ids = slices.Compact(ids)
		if len(ids) == 1 {
			conds = append(conds, "r.device_id == "+store.FluxString(ids[0]))
		} else {
			// One anchored regex, not a chain of ors: Flux 0.65 takes seconds
			// to plan a thousand ors. Device ids match ^[A-Za-z0-9_-]{1,64}$
			// (Rule.Validate), so none holds a regex or Flux special character.
			conds = append(conds, "r.device_id =~ /^("+strings.Join(ids, "|")+")$/")
		}
	}
	// alert_events lives in the same bucket and carries device_id too; it
	// is never a device's reading.
	conds = append(conds, "r._measurement != "+store.FluxString(EventMeasurement))
	var b strings.Builder
	fmt.Fprintf(&b, "from(bucket: %s)\n", store.FluxString(bucket))
	fmt.Fprintf(&b, "  |> range(start: %s, stop: %s)\n", store.FluxTime(start), store.FluxTime(stop))
	fmt.Fprintf(&b, "  |> filter(fn: (r) => %s)\n", strings.Join(conds, " and "))
	b.WriteString(`  |> keep(columns: ["_time", "_value", "_field", "device_id"])` + "\n")
	return b.String()
}
