package alerts

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// oddSite needs escaping in line protocol and in Flux. (A backslash before
// a special character is not stored as written: see store.Line.)
const oddSite = `quay "7" ${x}, a\b=c`

// backtestStore starts (or reuses) the shared influxd and writes the
// scenario: minute readings from t0-1m to t0+11m.
func backtestStore(t *testing.T) *store.Store {
	t.Helper()
	srv := testenv.Influx(t)
	ctx := context.Background()
	s, err := store.New(ctx, store.Options{URL: srv.URL, Bucket: testenv.NewDB(t), CreateDatabase: true})
	require.NoError(t, err)
	t.Cleanup(s.Close)

	var buf []byte
	n := 0
	point := func(dev *telemetry.Device, ts time.Time, vals ...telemetry.Value) {
		tags := []store.Tag{{Key: "device_id", Value: dev.ID}, {Key: "domain", Value: dev.Domain}, {Key: "site", Value: dev.Site}}
		buf = store.AppendPoint(buf, dev.Type, tags, vals, ts)
		n++
	}
	num := func(name string, v float64) telemetry.Value { return telemetry.Value{Name: name, Num: v} }
	tc1, tc2, ws1, odd, gap := btDevices()
	// tc-1: over 800 from 1m to 3m (fires at 3m with for 2m), a blip at
	// 5m that does not last, then over from 7m on (fires at 9m, still
	// open). The points just outside [t0, t0+11m) would change that if the
	// range leaked.
	tc1Flow := []float64{100, 900, 950, 960, 100, 900, 100, 900, 950, 990, 995}
	point(tc1, at(-time.Minute), num("flow_vph", 900), num("speed_kmh", 50))
	for i, v := range tc1Flow {
		point(tc1, at(time.Duration(i)*time.Minute), num("flow_vph", v), num("speed_kmh", 50))
	}
	point(tc1, at(11*time.Minute), num("flow_vph", 100))
	for i := range 11 {
		ts := at(time.Duration(i) * time.Minute)
		point(tc2, ts, num("flow_vph", 999))                                             // another site
		point(ws1, ts, num("flow_vph", 999))                                             // another type
		point(odd, ts, num("flow_vph", 1000))                                            // a site to escape
		point(gap, ts, telemetry.Value{Name: "ice", Bool: i < 3 || i > 6, IsBool: true}) // false 3m..6m
	}
	require.NoError(t, s.WriteLines(ctx, buf, n))
	return s
}

func btDevices() (tc1, tc2, ws1, odd, gap *telemetry.Device) {
	tc1 = &telemetry.Device{ID: "tc-1", Profile: &telemetry.Profile{Type: "traffic_counter", Domain: "roads", Site: "north", Tags: map[string]string{"lane": "2"}}}
	tc2 = &telemetry.Device{ID: "tc-2", Profile: &telemetry.Profile{Type: "traffic_counter", Domain: "roads", Site: "south", Tags: map[string]string{"lane": "1"}}}
	ws1 = &telemetry.Device{ID: "ws-1", Profile: &telemetry.Profile{Type: "weather_station", Domain: "roads", Site: "north"}}
	odd = &telemetry.Device{ID: "odd", Profile: &telemetry.Profile{Type: "traffic_counter", Domain: "roads", Site: oddSite}}
	gap = &telemetry.Device{ID: "gap-1", Profile: &telemetry.Profile{Type: "weather_station", Domain: "roads", Site: "north"}}
	return
}

func TestBacktestFromInflux(t *testing.T) {
	s := backtestStore(t)
	ctx := context.Background()
	reg := newRegistry(btDevices())
	src := BacktestSource{Querier: s, Bucket: s.Bucket(), Lookup: reg.lookup}
	start, stop := at(0), at(11*time.Minute)
	hot := Rule{Name: "busy", Kind: KindThreshold, Metric: "flow_vph", Op: ">", Value: 800, For: Duration(2 * time.Minute)}

	t.Run("threshold with for, by type and site", func(t *testing.T) {
		r := hot
		r.Selector = Selector{Type: "traffic_counter", Site: "north"}
		got, err := src.Backtest(ctx, r, start, stop)
		require.NoError(t, err)
		assert.Equal(t, 11, got.ReadingsScanned, "only tc-1's flow_vph in [start, stop)")
		assert.Equal(t, []Interval{
			{DeviceID: "tc-1", Start: at(3 * time.Minute), End: at(4 * time.Minute), Value: 950, Since: at(time.Minute)},
			{DeviceID: "tc-1", Start: at(9 * time.Minute), Value: 950, Since: at(7 * time.Minute)},
		}, got.Intervals)
	})

	t.Run("device ids and a site that needs escaping", func(t *testing.T) {
		r := hot
		r.Selector = Selector{DeviceIDs: []string{"tc-1", "odd", "tc-1"}, Site: oddSite}
		got, err := src.Backtest(ctx, r, start, stop)
		require.NoError(t, err)
		assert.Equal(t, 11, got.ReadingsScanned)
		assert.Equal(t, []Interval{{DeviceID: "odd", Start: at(2 * time.Minute), Value: 1000, Since: at(0)}}, got.Intervals)
	})

	t.Run("the most device ids a selector may hold", func(t *testing.T) {
		r := hot
		for i := range maxSelectorID - 1 {
			r.Selector.DeviceIDs = append(r.Selector.DeviceIDs, fmt.Sprintf("dev-%04d", i))
		}
		r.Selector.DeviceIDs = append(r.Selector.DeviceIDs, "tc-1")
		got, err := src.Backtest(ctx, r, start, stop)
		require.NoError(t, err)
		assert.Equal(t, 11, got.ReadingsScanned)
		assert.Len(t, got.Intervals, 2)
	})

	t.Run("tags through the registry", func(t *testing.T) {
		r := hot
		r.Selector = Selector{Tags: map[string]string{"lane": "1"}}
		got, err := src.Backtest(ctx, r, start, stop)
		require.NoError(t, err)
		assert.Equal(t, 44, got.ReadingsScanned, "every flow_vph is read, then matched by tag")
		assert.Equal(t, []Interval{{DeviceID: "tc-2", Start: at(2 * time.Minute), Value: 999, Since: at(0)}}, got.Intervals)

		noReg := src
		noReg.Lookup = nil
		_, err = noReg.Backtest(ctx, r, start, stop)
		var ve *ValidationError
		require.ErrorAs(t, err, &ve)
		assert.Contains(t, ve.Fields, "selector.tags")
	})

	t.Run("absence of any metric, booleans read", func(t *testing.T) {
		r := Rule{Name: "quiet", Kind: KindAbsence, For: Duration(90 * time.Second), Selector: Selector{DeviceIDs: []string{"gap-1"}}}
		got, err := src.Backtest(ctx, r, start, stop)
		require.NoError(t, err)
		assert.Equal(t, 11, got.ReadingsScanned)
		assert.Empty(t, got.Intervals, "a false is a reading too")

		r = Rule{Name: "ice", Kind: KindThreshold, Metric: "ice", Op: ">=", Value: 1, Selector: Selector{DeviceIDs: []string{"gap-1"}}}
		got, err = src.Backtest(ctx, r, start, stop)
		require.NoError(t, err)
		assert.Equal(t, []Interval{
			{DeviceID: "gap-1", Start: at(0), End: at(3 * time.Minute), Value: 1, Since: at(0)},
			{DeviceID: "gap-1", Start: at(7 * time.Minute), Value: 1, Since: at(7 * time.Minute)},
		}, got.Intervals)
	})

	t.Run("too many readings", func(t *testing.T) {
		small := src
		small.MaxReadings = 10
		r := hot
		r.Selector = Selector{DeviceIDs: []string{"tc-1"}}
		_, err := small.Backtest(ctx, r, start, stop)
		require.ErrorIs(t, err, ErrTooManyReadings)
		small.MaxReadings = 11
		_, err = small.Backtest(ctx, r, start, stop)
		require.NoError(t, err)
	})

	t.Run("invalid input names the fields", func(t *testing.T) {
		for _, tc := range []struct {
			rule        Rule
			start, stop time.Time
			field       string
		}{
			{hot, stop, start, "stop"},
			{hot, start, start.Add(40 * 24 * time.Hour), "stop"},
			{hot, time.Time{}, stop, "start"},
			{Rule{Name: "x", Kind: KindThreshold, Op: ">"}, start, stop, "metric"},
		} {
			_, err := src.Backtest(ctx, tc.rule, tc.start, tc.stop)
			var ve *ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Contains(t, ve.Fields, tc.field)
		}
	})
}

func TestBacktestFluxQuery(t *testing.T) {
	r := Rule{Metric: "flow_vph", Selector: Selector{Type: `a"b`, Domain: "roads", Site: "${x}", DeviceIDs: []string{"b", "a", "b"}}}
	q := backtestFlux("db/rp", r, at(0), at(time.Minute))
	assert.Equal(t, `from(bucket: "db/rp")
  |> range(start: 2026-03-02T08:00:00Z, stop: 2026-03-02T08:01:00Z)
  |> filter(fn: (r) => r._measurement == "a\"b" and r._field == "flow_vph" and r.domain == "roads" and r.site == "\${x}" and r.device_id =~ /^(a|b)$/ and r._measurement != "alert_events")
  |> keep(columns: ["_time", "_value", "_field", "device_id"])
`, q)
	assert.False(t, strings.Contains(backtestFlux("db", Rule{Kind: KindAbsence}, at(0), at(time.Minute)), "r._field"),
		"an absence rule on any metric reads every field")
}

// failingQuerier fails every query, as an unreachable InfluxDB would.
type failingQuerier struct{}

func (failingQuerier) Query(context.Context, string) (*api.QueryTableResult, error) {
	return nil, errors.New("connection refused")
}

func TestBacktestQueryError(t *testing.T) {
	src := BacktestSource{Querier: failingQuerier{}, Bucket: "db"}
	_, err := src.Backtest(context.Background(), Rule{Name: "r", Kind: KindThreshold, Metric: "x", Op: ">"}, at(0), at(time.Hour))
	require.ErrorContains(t, err, "connection refused")
	require.ErrorContains(t, err, "backtest: query db")
}
