// Package history answers planners' questions about the past: windowed
// aggregates of a metric per device, site, domain or type (JSON, or CSV
// streamed row by row), availability per device, and the hourly rollup tier
// that keeps year-long questions cheap. dashboard-api serves it under
// /api/v1/history; cmd wires a Service and runs RunRollup.
//
// # Queries
//
// Every query is Flux that InfluxDB 1.8 (Flux 0.65) runs as well as 2.x,
// and each shape is tested against 1.8.3. User input reaches Flux only as
// validated values: metric names match [a-z][a-z0-9_]{0,63}, device ids the
// registry's rule, site/domain/type are printable text passed as escaped
// string literals (store.FluxString), durations and times are parsed in Go
// and printed by Go. Windows are aligned to the epoch (UTC days), labelled
// with their start (timeSrc "_start"), clipped to the range. Booleans count
// as 0/1 (toFloat), so "mean" of a boolean is the share of true. p95 is
// quantile(method: "exact_selector"): a measured value. A separate
// filter(r._time < stop) follows the tag filter because 1.8's storage
// returns points at the range's stop; keeping it a separate call lets 1.8
// still push the tag filter down to storage.
//
// Limits: at most Options.MaxWindows windows per series (checked before the
// query, 400 naming "every"), Options.MaxPoints points per JSON answer and
// Options.MaxExportPoints rows per CSV export (400 naming "every" while
// nothing was sent; a CSV stream that fails later is cut, never shortened
// silently).
//
// # Downsampling: a project-side rollup worker, not a continuous query
//
// A 1.8 continuous query would only exist on 1.x (2.x has tasks instead),
// is invisible to tests and to the code that decides which tier answers,
// and cannot be re-run for late data. RunRollup instead computes, every
// RollupInterval (5m), the hourly mean, min, max, sum and count of every
// metric of every series over the last closed hours (RollupLookback, 3h:
// late readings get in) with one Flux query (window(every: 1h) and one yield
// per statistic) and writes them through a store.Store opened on the rollup
// bucket. Writing the same hour twice overwrites it: runs are idempotent,
// several instances may run it. The first run backfills RollupBackfill
// (48h); raise it once, or call Rollup(ctx, start, stop), to fill older
// data.
//
// Rollup schema, in bucket "<db>/rollup_1h" (the retention policy rollup_1h
// of the database on 1.x; a bucket of your choice on 2.x): the raw
// measurement and tags plus tag stat = mean|min|max|sum|count, the metric as
// field name (float; count too), time = the hour's start. sum is kept beside
// mean so that a mean over several hours or devices is exact: sum of sums
// divided by sum of counts.
//
// /history reads the rollup when every is a whole number of hours, start is
// on an hour and agg is mean, min, max, sum or count, for the part of the
// range this process knows to be rolled up (RolledUpTo); windows after it
// come from raw data, split on a window boundary ("source":"rollup_1h+raw").
// Answers say which tier answered ("source"); tier=raw forces raw data,
// tier=rollup_1h the rollup (a 400 unless start and stop are on whole hours
// and every and agg qualify). Raw queries leave alert_events out: its
// fields are alert transitions, not readings.
//
// Retention: EnsureRetention (called by RunRollup) creates or alters, over
// 1.x's /query endpoint, the rollup_1h policy (RollupRetention, default
// forever) and, when RawRetention is set, the raw policy. On 2.x buckets and
// their retention are created with the influx CLI.
//
// # Planners' questions as Flux
//
// p95 link utilisation per site per day is GET /api/v1/history/p95
// (metric=utilisation_pct&type=router_link); availability per device is
// GET /api/v1/history/availability (Service.Availability takes maintenance
// windows per device, ExcludeByDevice, for silences). The others, on 1.8
// (bucket "infrawatch"; on 2.x use the bucket names):
//
// Busiest hour per road segment (site) over a month: per hour, the sum over
// the segment's counters of their hourly mean flow; max keeps its time.
//
//	from(bucket: "infrawatch/rollup_1h")
//	  |> range(start: -30d)
//	  |> filter(fn: (r) => r._measurement == "traffic_counter" and r._field == "flow_vph" and r.stat == "mean")
//	  |> group(columns: ["site"])
//	  |> aggregateWindow(every: 1h, fn: sum, createEmpty: false, timeSrc: "_start")
//	  |> max()
//
// Typical busiest hour of day per segment: the same hourly sums, then
// group by hour of day in a spreadsheet, or over HTTP:
// GET /api/v1/history?metric=flow_vph&type=traffic_counter&group_by=site&every=1h&agg=mean&start=-30d
// (format=csv).
//
// Mean bus delay per route per day: a route's buses are in the registry
// (GET /api/v1/devices?type=bus, their route tag); pass their ids as a
// regular expression:
//
//	from(bucket: "infrawatch/rollup_1h")
//	  |> range(start: -7d)
//	  |> filter(fn: (r) => r._measurement == "bus" and r._field == "delay_s" and (r.stat == "sum" or r.stat == "count"))
//	  |> filter(fn: (r) => r.device_id =~ /^(bus-1|bus-2|bus-3)$/)
//	  |> group(columns: ["stat"])
//	  |> aggregateWindow(every: 1d, fn: sum, createEmpty: false, timeSrc: "_start")
//	  |> pivot(rowKey: ["_time"], columnKey: ["stat"], valueColumn: "_value")
//	  |> map(fn: (r) => ({_time: r._time, mean_delay_s: r.sum / r.count}))
//
// p95 link utilisation per site per day, as Flux (what /history/p95 sends):
//
//	from(bucket: "infrawatch")
//	  |> range(start: -30d)
//	  |> filter(fn: (r) => r._measurement == "router_link" and r._field == "utilisation_pct")
//	  |> toFloat()
//	  |> group(columns: ["site"])
//	  |> window(every: 1d)
//	  |> quantile(q: 0.95, method: "exact_selector")
//	  |> duplicate(column: "_start", as: "_time")
//	  |> window(every: inf)
package history
