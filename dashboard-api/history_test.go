package dashboardapi

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/infrawatch/infrawatch/history"
	"github.com/stretchr/testify/require"
)

// noQuerier stands in for InfluxDB: the fake below never reaches it.
type noQuerier struct{}

func (noQuerier) Query(context.Context, string) (*api.QueryTableResult, error) {
	return nil, errors.New("no influxdb in this test")
}

var histNow = time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)

// fakeHistory parses and plans with the real history.Service (so the 400s
// are the real ones) and answers with canned points; the queries themselves
// are tested against InfluxDB in the history package.
type fakeHistory struct {
	*history.Service
	points []history.Point

	mu        sync.Mutex // the handler runs in the server's goroutine
	failAfter int        // WriteCSV fails after this many rows when > 0
	lastAvail history.AvailabilityQuery
	lastPlan  history.Plan
}

func (f *fakeHistory) plan() history.Plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastPlan
}

func (f *fakeHistory) avail() history.AvailabilityQuery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastAvail
}

func newFakeHistory(t *testing.T) *fakeHistory {
	t.Helper()
	svc, err := history.New(history.Options{Store: noQuerier{}, Now: func() time.Time { return histNow }})
	require.NoError(t, err)
	return &fakeHistory{Service: svc, points: []history.Point{
		{Key: "s1", Time: histNow.Add(-2 * time.Hour).Truncate(time.Hour), Value: 1260.5},
		{Key: "s1", Time: histNow.Add(-time.Hour).Truncate(time.Hour), Value: 980},
		{Key: "s2", Time: histNow.Add(-time.Hour).Truncate(time.Hour), Value: 3},
	}}
}

func (f *fakeHistory) Collect(_ context.Context, p history.Plan) (history.Answer, error) {
	f.mu.Lock()
	f.lastPlan = p
	f.mu.Unlock()
	a := history.Answer{Metric: p.Query.Metric, Agg: p.Query.Agg, GroupBy: p.Query.GroupBy, Every: "3600s",
		Start: p.Query.Start, Stop: p.Query.Stop, Source: p.Source}
	for _, pt := range f.points {
		if n := len(a.Series); n == 0 || a.Series[n-1].Key != pt.Key {
			a.Series = append(a.Series, history.Series{Key: pt.Key})
		}
		s := &a.Series[len(a.Series)-1]
		s.Points = append(s.Points, history.Sample{Time: pt.Time, Value: pt.Value})
	}
	return a, nil
}

func (f *fakeHistory) WriteCSV(_ context.Context, w io.Writer, p history.Plan, begin func()) error {
	f.mu.Lock()
	f.lastPlan = p
	failAfter := f.failAfter
	f.mu.Unlock()
	begin()
	cw := csv.NewWriter(w)
	_ = cw.Write(history.CSVHeader(p.Query))
	for i, pt := range f.points {
		if failAfter > 0 && i == failAfter {
			cw.Flush()
			return errors.New("influxdb went away")
		}
		_ = cw.Write([]string{pt.Key, pt.Time.Format(time.RFC3339), "1"})
	}
	cw.Flush()
	return cw.Error()
}

func (f *fakeHistory) Availability(_ context.Context, q history.AvailabilityQuery) ([]history.Availability, error) {
	f.mu.Lock()
	f.lastAvail = q
	f.mu.Unlock()
	out := []history.Availability{}
	for _, d := range q.Devices {
		r := 0.5
		out = append(out, history.Availability{DeviceID: d.ID, IntervalSeconds: d.Interval.Seconds(), Expected: 2, Received: 1, Availability: &r})
	}
	return out, nil
}

func init() {
	envHooks = append(envHooks, func(t *testing.T, o *Options) {
		o.History = newFakeHistory(t)
	})
	extraAuthCases = append(extraAuthCases, func() []authCase {
		return []authCase{
			// Without metric a permitted caller gets past auth to validation.
			{"GET", "/api/v1/history", nil, RoleViewer, 400},
			{"GET", "/api/v1/history/p95", nil, RoleViewer, 400},
			{"GET", "/api/v1/history/availability", nil, RoleViewer, 200},
		}
	})
}

func historyEnv(t *testing.T) (*env, *fakeHistory) {
	fh := newFakeHistory(t)
	e := newEnv(t, func(o *Options) { o.History = fh })
	return e, fh
}

func TestHistoryJSON(t *testing.T) {
	e, fh := historyEnv(t)
	r := e.do("GET", "/api/v1/history?metric=flow_vph&group_by=site&agg=max&start=-6h", viewerTok, nil)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	var a history.Answer
	require.NoError(t, json.Unmarshal(r.body, &a))
	require.Equal(t, "raw", a.Source)
	require.Equal(t, history.AggMax, a.Agg)
	require.Equal(t, history.BySite, a.GroupBy)
	require.Equal(t, histNow.Add(-6*time.Hour), a.Start)
	require.Len(t, a.Series, 2)
	require.Equal(t, 1260.5, a.Series[0].Points[0].Value)
	require.Equal(t, "flow_vph", fh.plan().Query.Metric)
}

func TestHistoryBadParameters(t *testing.T) {
	e, _ := historyEnv(t)
	for _, tc := range []struct{ query, field string }{
		{"", "metric"},
		{"metric=" + url.QueryEscape(`x") |> drop()`), "metric"},
		{"metric=flow&device_id=" + url.QueryEscape(`tc"1`), "device_id"},
		{"metric=flow&every=1h)", "every"},
		{"metric=flow&every=1y", "every"},
		{"metric=flow&start=-500d&every=1h", "every"}, // over 10,000 windows
		{"metric=flow&start=tomorrow", "start"},
		{"metric=flow&agg=median", "agg"},
		{"metric=flow&group_by=route", "group_by"},
		{"metric=flow&agg=p95&tier=rollup_1h", "tier"},
		// InfluxDB cannot hold these times: its error was a 500.
		{"metric=flow&start=1000-01-01T00:00:00Z&every=1d", "start"},
		{"metric=flow&stop=3000-01-01T00:00:00Z", "stop"},
	} {
		for _, accept := range []string{"", "text/csv"} {
			req, err := http.NewRequest("GET", e.srv.URL+"/api/v1/history?"+tc.query, nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+viewerTok)
			if accept != "" {
				req.Header.Set("Accept", accept)
			}
			resp, err := e.srv.Client().Do(req)
			require.NoError(t, err)
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r := response{status: resp.StatusCode, header: resp.Header, body: raw}
			require.Equal(t, 400, r.status, "%s: %s", tc.query, raw)
			code, msg, fields := r.errorOf(t)
			require.Equal(t, CodeValidation, code)
			require.Contains(t, fields, tc.field, tc.query)
			require.Contains(t, msg, tc.field)
		}
	}
	r := e.do("GET", "/api/v1/history/p95?metric=util&agg=mean", viewerTok, nil)
	require.Equal(t, 400, r.status)
}

func TestHistoryCSV(t *testing.T) {
	e, fh := historyEnv(t)
	for _, how := range []string{"accept", "format"} {
		path := "/api/v1/history?metric=flow_vph&group_by=site"
		req, err := http.NewRequest("GET", e.srv.URL+path, nil)
		require.NoError(t, err)
		if how == "accept" {
			req.Header.Set("Accept", "text/csv")
		} else {
			req.URL.RawQuery += "&format=csv"
		}
		req.Header.Set("Authorization", "Bearer "+viewerTok)
		resp, err := e.srv.Client().Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, 200, resp.StatusCode, "%s", body)
		require.Equal(t, "text/csv; charset=utf-8", resp.Header.Get("Content-Type"))
		require.Equal(t, "raw", resp.Header.Get("X-Infrawatch-Source"))
		require.Contains(t, resp.Header.Get("Content-Disposition"), `filename="history-flow_vph-mean.csv"`)
		lines := strings.Split(strings.TrimSpace(string(body)), "\n")
		require.Equal(t, "site,time,mean", lines[0])
		require.Len(t, lines, 4)
		require.Equal(t, history.DefaultMaxExportPoints, fh.plan().Query.MaxPoints, "exports have their own cap")
	}

	// A failure mid-stream cuts the connection: the client sees an error,
	// not a short file that looks complete.
	fh.mu.Lock()
	fh.failAfter = 1
	fh.mu.Unlock()
	req, err := http.NewRequest("GET", e.srv.URL+"/api/v1/history?metric=flow_vph", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "text/csv")
	req.Header.Set("Authorization", "Bearer "+viewerTok)
	resp, err := e.srv.Client().Do(req)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	require.Error(t, err)
}

func TestHistoryP95Defaults(t *testing.T) {
	e, fh := historyEnv(t)
	r := e.do("GET", "/api/v1/history/p95?metric=util_pct&domain=network", viewerTok, nil)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	q := fh.plan().Query
	require.Equal(t, history.AggP95, q.Agg)
	require.Equal(t, history.BySite, q.GroupBy)
	require.Equal(t, 24*time.Hour, q.Every)
	require.Equal(t, histNow.Add(-7*24*time.Hour), q.Start)
	require.Equal(t, "network", q.Filter.Domain)
}

func TestHistoryAvailability(t *testing.T) {
	e, fh := historyEnv(t)
	e.seed(Device{ID: "tc-1", Domain: "roads", Site: "s1", ExpectedInterval: 60})
	e.seed(Device{ID: "tc-2", Domain: "roads", Site: "s1", ExpectedInterval: 300})
	e.seed(Device{ID: "tc-9", Domain: "roads", Site: "s1", ExpectedInterval: 60, Lifecycle: "retired"})
	e.seed(Device{ID: "rt-1", Domain: "network", Site: "s1", ExpectedInterval: 30})
	r := e.do("GET", "/api/v1/history/availability?domain=roads&start=-2d&exclude="+
		url.QueryEscape("2025-03-09T00:00:00Z/2025-03-09T02:00:00Z"), viewerTok, nil)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	var got struct {
		Exclude []history.Interval     `json:"exclude"`
		Devices []history.Availability `json:"devices"`
	}
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Len(t, got.Devices, 2)
	require.Len(t, got.Exclude, 1)
	require.Equal(t, []history.ExpectedDevice{{ID: "tc-1", Interval: time.Minute}, {ID: "tc-2", Interval: 5 * time.Minute}}, fh.avail().Devices)

	r = e.do("GET", "/api/v1/history/availability?device_id=nope", viewerTok, nil)
	require.Equal(t, 404, r.status)
	r = e.do("GET", "/api/v1/history/availability?exclude=yesterday", viewerTok, nil)
	require.Equal(t, 400, r.status)
	_, _, fields := r.errorOf(t)
	require.Contains(t, fields, "exclude")
}
