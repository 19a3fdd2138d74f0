package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api/query"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Defaults of LastReadingsQuery.
const (
	DefaultLastRecent = 15 * time.Minute
	DefaultLastWindow = 24 * time.Hour
	// lastIDsPerQuery bounds the ids in one query's device_id regex: Flux
	// 0.65 (InfluxDB 1.8) plans long regexes slowly.
	lastIDsPerQuery = 500
)

// LastReadingsQuery selects the devices whose newest stored values
// LastReadings returns.
type LastReadingsQuery struct {
	// Devices maps a measurement (a device type) to the ids of the devices
	// of that type. Ids that do not match ^[A-Za-z0-9_-]{1,64}$ (the
	// registry allows no others) are only found by the first pass: the
	// second splices ids into a regex.
	Devices map[string][]string
	// Now is the end of the look-back; default time.Now().
	Now time.Time
	// Recent is the first pass's look-back, over every device of a type;
	// default DefaultLastRecent.
	Recent time.Duration
	// Window is the whole look-back; devices not heard from within Recent
	// are looked for back to Now-Window, by id. Default DefaultLastWindow.
	Window time.Duration
}

// LastReadings returns the newest stored value of each metric of each
// device, as readings: one per device and distinct time, so a device whose
// metrics were last written together comes back as one reading. Devices
// with nothing stored within the window are absent; devices of the
// measurements asked for that were not asked for may be present (the first
// pass does not filter by id).
//
// InfluxDB 1.8 does not push last() down to storage: a query reads every
// point in its range. So the look-back is split: one query per measurement
// over the recent past (where nearly every live device is found), then one
// per measurement and block of ids over the whole window for the devices
// not found, which are quiet and so have few points. On 2.x last() is
// pushed down and both passes are cheap.
//
// On an error it returns what it had read so far with the error.
func (s *Store) LastReadings(ctx context.Context, q LastReadingsQuery) ([]telemetry.Reading, error) {
	if q.Now.IsZero() {
		q.Now = time.Now()
	}
	if q.Recent <= 0 {
		q.Recent = DefaultLastRecent
	}
	if q.Window <= 0 {
		q.Window = DefaultLastWindow
	}
	q.Recent = min(q.Recent, q.Window)
	last := lastValues{}
	measurements := make([]string, 0, len(q.Devices))
	for m := range q.Devices {
		measurements = append(measurements, m)
	}
	slices.Sort(measurements)
	for _, m := range measurements {
		if err := s.lastPass(ctx, last, m, nil, q.Now.Add(-q.Recent), q.Now); err != nil {
			return last.readings(), err
		}
		if q.Recent >= q.Window {
			continue
		}
		var missing []string
		for _, id := range q.Devices[m] {
			if _, ok := last[id]; !ok && telemetry.ValidID(id) {
				missing = append(missing, id)
			}
		}
		for len(missing) > 0 {
			n := min(len(missing), lastIDsPerQuery)
			if err := s.lastPass(ctx, last, m, missing[:n], q.Now.Add(-q.Window), q.Now.Add(-q.Recent)); err != nil {
				return last.readings(), err
			}
			missing = missing[n:]
		}
	}
	return last.readings(), nil
}

// lastValues holds device id → metric → newest value.
type lastValues map[string]map[string]timedValue

type timedValue struct {
	v telemetry.Value
	t time.Time
}

// lastPass runs one last() query over [start, stop) of measurement m,
// restricted to ids when given, and merges its rows into last.
func (s *Store) lastPass(ctx context.Context, last lastValues, m string, ids []string, start, stop time.Time) error {
	flux := lastFlux(s.opts.Bucket, m, ids, start, stop)
	res, err := s.Query(ctx, flux)
	if err != nil {
		return fmt.Errorf("query newest readings of %s: %w", m, err)
	}
	defer res.Close()
	for res.Next() {
		rec := res.Record()
		id, _ := rec.ValueByKey("device_id").(string)
		if id == "" {
			continue
		}
		v, ok := RecordValue(rec)
		if !ok {
			continue // strings and nulls are not metrics
		}
		metrics := last[id]
		if metrics == nil {
			metrics = map[string]timedValue{}
			last[id] = metrics
		}
		// A device that changed site or domain has one series per tag set:
		// keep the newest.
		if old, ok := metrics[v.Name]; !ok || rec.Time().After(old.t) {
			metrics[v.Name] = timedValue{v: v, t: rec.Time()}
		}
	}
	if err := res.Err(); err != nil {
		return fmt.Errorf("read newest readings of %s: %w", m, err)
	}
	return ctx.Err()
}

// readings turns last into readings, by device id and then time.
func (last lastValues) readings() []telemetry.Reading {
	ids := make([]string, 0, len(last))
	for id := range last {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []telemetry.Reading
	for _, id := range ids {
		first := len(out)
		for _, tv := range last[id] {
			i := slices.IndexFunc(out[first:], func(r telemetry.Reading) bool { return r.Time.Equal(tv.t) })
			if i < 0 {
				out = append(out, telemetry.Reading{DeviceID: id, Time: tv.t})
				i = len(out) - first - 1
			}
			r := &out[first+i]
			r.Values = append(r.Values, tv.v)
		}
		dev := out[first:]
		slices.SortFunc(dev, func(a, b telemetry.Reading) int { return a.Time.Compare(b.Time) })
		for i := range dev {
			slices.SortFunc(dev[i].Values, func(a, b telemetry.Value) int { return strings.Compare(a.Name, b.Name) })
		}
	}
	return out
}

// lastFlux builds one pass's query. Only what Flux 0.65 (InfluxDB 1.8) has
// is used; last() keeps each series' newest row, a series being one device,
// tag set and field.
func lastFlux(bucket, m string, ids []string, start, stop time.Time) string {
	conds := []string{"r._measurement == " + FluxString(m)}
	if len(ids) > 0 {
		// Ids match ^[A-Za-z0-9_-]{1,64}$ (LastReadingsQuery.Devices): no
		// regex or Flux special character.
		conds = append(conds, "r.device_id =~ /^("+strings.Join(ids, "|")+")$/")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "from(bucket: %s)\n", FluxString(bucket))
	fmt.Fprintf(&b, "  |> range(start: %s, stop: %s)\n", FluxTime(start), FluxTime(stop))
	fmt.Fprintf(&b, "  |> filter(fn: (r) => %s)\n", strings.Join(conds, " and "))
	b.WriteString("  |> last()\n")
	b.WriteString(`  |> keep(columns: ["_time", "_value", "_field", "device_id"])` + "\n")
	return b.String()
}

// RecordValue is a Flux record's field as a metric value: numbers (float,
// integer, unsigned) and booleans; false for strings and nulls, which are
// not metrics.
func RecordValue(rec *query.FluxRecord) (telemetry.Value, bool) {
	v := telemetry.Value{Name: rec.Field()}
	switch x := rec.Value().(type) {
	case float64:
		v.Num = x
	case int64:
		v.Num = float64(x)
	case uint64:
		v.Num = float64(x)
	case bool:
		v.Bool, v.IsBool = x, true
	default:
		return telemetry.Value{}, false
	}
	return v, true
}
