package history

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

// Interval is a span of time [Start, Stop), such as a maintenance window.
type Interval struct {
	Start time.Time `json:"start"`
	Stop  time.Time `json:"stop"`
}

// ExpectedDevice is a device to report on and how often it should report.
type ExpectedDevice struct {
	ID       string
	Interval time.Duration // the registry's expected_interval
}

// AvailabilityQuery asks, per device, which share of the expected readings
// arrived in [Start, Stop), not counting excluded intervals.
type AvailabilityQuery struct {
	Filter Filter
	Start  time.Time
	Stop   time.Time
	// Devices are reported on, in this order; a device with no reading is
	// reported with 0 received. Devices must have passed the id rule.
	Devices []ExpectedDevice
	// Exclude holds intervals excluded for every device (maintenance
	// windows of the whole selection).
	Exclude []Interval
	// ExcludeByDevice holds intervals excluded for one device (its
	// silences from the alert engine).
	ExcludeByDevice map[string][]Interval
}

// Availability is one device's answer.
type Availability struct {
	DeviceID string `json:"device_id"`
	// IntervalSeconds is the expected time between readings.
	IntervalSeconds float64 `json:"interval_seconds"`
	// CoveredSeconds is the range minus the excluded time.
	CoveredSeconds float64 `json:"covered_seconds"`
	// Expected readings in the covered time, Received distinct reading
	// times in it.
	Expected int64 `json:"expected"`
	Received int64 `json:"received"`
	// Availability is min(1, Received/Expected); null when nothing was
	// expected.
	Availability *float64 `json:"availability"`
}

// MaxExcludes caps the excluded intervals of one question (the Flux filter
// grows with each).
const MaxExcludes = 200

// ParseAvailability reads start, stop (as /history), device_id, site,
// domain, type, and exclude: repeated or comma-separated "start/stop" pairs
// of RFC 3339 times. Devices are for the caller to fill in.
func (s *Service) ParseAvailability(v url.Values) (AvailabilityQuery, error) {
	errs := map[string]string{}
	q := AvailabilityQuery{Filter: parseFilter(v, errs)}
	q.Start, q.Stop = parseRange(v, s.opts.Now(), errs)
	for _, raw := range v["exclude"] {
		for _, item := range strings.Split(raw, ",") {
			a, b, ok := strings.Cut(strings.TrimSpace(item), "/")
			t1, err1 := time.Parse(time.RFC3339Nano, a)
			t2, err2 := time.Parse(time.RFC3339Nano, b)
			if !ok || err1 != nil || err2 != nil || !t1.Before(t2) {
				errs["exclude"] = "each item must be start/stop, RFC 3339 times, start before stop"
				continue
			}
			q.Exclude = append(q.Exclude, Interval{t1.UTC(), t2.UTC()})
		}
	}
	if len(q.Exclude) > MaxExcludes {
		errs["exclude"] = fmt.Sprintf("at most %d intervals", MaxExcludes)
	}
	if len(errs) > 0 {
		return AvailabilityQuery{}, ValidationErrors(errs)
	}
	return q, nil
}

// mergeIntervals clips the intervals to [start, stop), sorts and merges
// them.
func mergeIntervals(in []Interval, start, stop time.Time) []Interval {
	var out []Interval
	for _, iv := range in {
		if iv.Start.Before(start) {
			iv.Start = start
		}
		if iv.Stop.After(stop) {
			iv.Stop = stop
		}
		if iv.Start.Before(iv.Stop) {
			out = append(out, iv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	merged := out[:0]
	for _, iv := range out {
		if n := len(merged); n > 0 && !iv.Start.After(merged[n-1].Stop) {
			if iv.Stop.After(merged[n-1].Stop) {
				merged[n-1].Stop = iv.Stop
			}
			continue
		}
		merged = append(merged, iv)
	}
	return merged
}

func excludePredicate(b *strings.Builder, device string, ivs []Interval) {
	for _, iv := range ivs {
		b.WriteString(" and not (")
		if device != "" {
			b.WriteString("r.device_id == ")
			b.WriteString(store.FluxString(device))
			b.WriteString(" and ")
		}
		fmt.Fprintf(b, "r._time >= %s and r._time < %s)", store.FluxTime(iv.Start), store.FluxTime(iv.Stop))
	}
}

// maxIDSelection bounds the devices an availability query selects by id.
const maxIDSelection = 2000

// AvailabilityFlux is the query counting distinct reading times per device.
func (s *Service) AvailabilityFlux(q AvailabilityQuery) string {
	var b strings.Builder
	fmt.Fprintf(&b, "from(bucket: %s)\n  |> range(start: %s, stop: %s)\n", store.FluxString(s.opts.Bucket), store.FluxTime(q.Start), store.FluxTime(q.Stop))
	b.WriteString("  |> filter(fn: (r) => r._measurement != ")
	b.WriteString(store.FluxString(DefaultAlertMeasurement))
	f := q.Filter
	if len(q.Devices) > 0 && len(q.Devices) <= maxIDSelection && f.DeviceID == "" && (f.Site != "" || f.Domain != "") {
		// The registry chose the devices by where they are now; a reading
		// carries the site (and domain) it had when taken, so a device
		// that moved would miss its readings from before. Select the
		// devices by id instead (ids match ^[A-Za-z0-9_-]+$: no regexp
		// metacharacters). Past maxIDSelection devices the query would
		// grow by ~70 bytes a device, so the tag filter stays, and a
		// device that moved within the range counts as missing before
		// its move.
		f.Site, f.Domain = "", ""
		b.WriteString(" and r.device_id =~ /^(?:")
		sep := ""
		for _, d := range q.Devices {
			if telemetry.ValidID(d.ID) { // Availability rejects the others
				b.WriteString(sep + d.ID)
				sep = "|"
			}
		}
		b.WriteString(")$/")
	}
	b.WriteString(tagPredicate(f))
	excludePredicate(&b, "", mergeIntervals(q.Exclude, q.Start, q.Stop))
	ids := make([]string, 0, len(q.ExcludeByDevice))
	for id := range q.ExcludeByDevice {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		excludePredicate(&b, id, mergeIntervals(q.ExcludeByDevice[id], q.Start, q.Stop))
	}
	b.WriteString(")\n")
	b.WriteString(stopFilter(q.Stop))
	// One reading carries several metrics (fields) with one time: count
	// distinct times. keep before group so fields of different types never
	// share a table.
	b.WriteString("  |> keep(columns: [\"_time\", \"device_id\"])\n")
	b.WriteString("  |> group(columns: [\"device_id\"])\n")
	b.WriteString("  |> unique(column: \"_time\")\n")
	b.WriteString("  |> map(fn: (r) => ({_time: r._time, device_id: r.device_id, _value: 1.0}))\n")
	b.WriteString("  |> sum()\n")
	return b.String()
}

// Availability answers q: for each of q.Devices, expected readings over the
// covered time (range minus excluded intervals) and distinct reading times
// received in it.
func (s *Service) Availability(ctx context.Context, q AvailabilityQuery) ([]Availability, error) {
	for _, d := range q.Devices {
		if !telemetry.ValidID(d.ID) {
			return nil, ValidationErrors{"device_id": fmt.Sprintf("%q must match ^[A-Za-z0-9_-]{1,64}$", d.ID)}
		}
	}
	for id := range q.ExcludeByDevice {
		if !telemetry.ValidID(id) {
			return nil, ValidationErrors{"device_id": fmt.Sprintf("%q must match ^[A-Za-z0-9_-]{1,64}$", id)}
		}
	}
	out := make([]Availability, 0, len(q.Devices))
	if len(q.Devices) == 0 {
		return out, nil
	}
	received := map[string]int64{}
	res, err := s.opts.Store.Query(ctx, s.AvailabilityFlux(q))
	if err != nil {
		return nil, fmt.Errorf("query availability: %w", err)
	}
	defer res.Close()
	for res.Next() {
		rec := res.Record()
		id, _ := rec.ValueByKey("device_id").(string)
		if v, ok := number(rec, "_value"); ok {
			received[id] = int64(v)
		}
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("read availability: %w", err)
	}
	global := mergeIntervals(q.Exclude, q.Start, q.Stop)
	for _, d := range q.Devices {
		ivs := mergeIntervals(append(slices.Clone(global), q.ExcludeByDevice[d.ID]...), q.Start, q.Stop)
		covered := q.Stop.Sub(q.Start)
		for _, iv := range ivs {
			covered -= iv.Stop.Sub(iv.Start)
		}
		a := Availability{DeviceID: d.ID, IntervalSeconds: d.Interval.Seconds(), CoveredSeconds: covered.Seconds(),
			Received: received[d.ID]}
		if d.Interval > 0 {
			a.Expected = int64(covered / d.Interval)
		}
		if a.Expected > 0 {
			r := float64(a.Received) / float64(a.Expected)
			if r > 1 {
				r = 1
			}
			a.Availability = &r
		}
		out = append(out, a)
	}
	return out, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
