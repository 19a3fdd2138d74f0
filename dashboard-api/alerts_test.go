package dashboardapi

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/alerts"
	"github.com/infrawatch/infrawatch/devices"
	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// Every test router gets a real alert engine over a SQLite file, holding a
// rule, a firing alert and a silence all with the id "dev-1" (the id the
// auth matrix puts in paths), and an in-memory backtest.
func init() {
	envHooks = append(envHooks, func(t *testing.T, o *Options) {
		newAlertFixture(t, o.Devices, true).install(o)
	})
	extraAuthCases = append(extraAuthCases, func() []authCase {
		rule := func() any {
			return map[string]any{"name": "busy", "kind": "threshold", "metric": "flow_vph", "op": ">", "value": 1000}
		}
		return []authCase{
			{"GET", "/api/v1/alerts", nil, RoleViewer, 200},
			{"GET", "/api/v1/alerts/:id", nil, RoleViewer, 200},
			{"POST", "/api/v1/alerts/:id/ack", func() any { return map[string]any{"note": "on it"} }, RoleOperator, 200},
			{"POST", "/api/v1/alerts/:id/resolve", func() any { return map[string]any{"note": "fixed"} }, RoleOperator, 200},
			{"GET", "/api/v1/rules", nil, RoleViewer, 200},
			{"POST", "/api/v1/rules", rule, RoleAdmin, 201},
			{"POST", "/api/v1/rules/backtest", func() any { return map[string]any{"rule": rule(), "start": "-1d"} }, RoleOperator, 200},
			{"GET", "/api/v1/rules/:id", nil, RoleViewer, 200},
			{"PUT", "/api/v1/rules/:id", rule, RoleAdmin, 200},
			{"DELETE", "/api/v1/rules/:id", nil, RoleAdmin, 204},
			{"GET", "/api/v1/silences", nil, RoleViewer, 200},
			{"POST", "/api/v1/silences", func() any { return map[string]any{"end": time.Now().Add(time.Hour)} }, RoleOperator, 201},
			{"DELETE", "/api/v1/silences/:id", nil, RoleOperator, 204},
		}
	})
}

// at0 is the start of the alert tests' timeline.
var at0 = time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC)

type alertClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *alertClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *alertClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// alertFixture is a real alerts.Engine over a real SQLite store.
type alertFixture struct {
	t      *testing.T
	path   string
	lookup func(string) (*telemetry.Device, bool)
	clock  *alertClock
	engine *alerts.Engine

	mu       sync.Mutex
	readings []telemetry.Reading // what the in-memory backtest replays
	btErr    error               // returned by the in-memory backtest when set
	btGate   chan struct{}       // when set, the in-memory backtest waits on it
	btCalls  chan struct{}       // signalled as each backtest starts
}

// registryLookup is the engine's view of the API's device registry.
func registryLookup(svc DeviceService) func(string) (*telemetry.Device, bool) {
	return func(id string) (*telemetry.Device, bool) {
		d, err := svc.Get(id)
		if err != nil {
			return nil, false
		}
		return &telemetry.Device{ID: d.ID, Name: d.Name, Profile: &telemetry.Profile{Type: d.Type, Domain: d.Domain, Site: d.Site, GatewayID: d.GatewayID, Lifecycle: d.Lifecycle, Tags: d.Tags}}, true
	}
}

func newAlertFixture(t *testing.T, reg DeviceService, seed bool) *alertFixture {
	t.Helper()
	f := &alertFixture{t: t, path: filepath.Join(t.TempDir(), "alerts.db"), lookup: registryLookup(reg),
		clock: &alertClock{t: at0}, btCalls: make(chan struct{}, 10)}
	if seed {
		ctx := context.Background()
		st := f.store()
		require.NoError(t, st.SaveRule(ctx, alerts.Rule{ID: "dev-1", Name: "seeded", Enabled: true, Kind: alerts.KindThreshold,
			Metric: "flow_vph", Op: ">", Value: 1000, Severity: alerts.SeverityCritical, Selector: alerts.Selector{DeviceIDs: []string{"dev-1"}}}))
		require.NoError(t, st.SaveAlerts(ctx, []alerts.Alert{{ID: "dev-1", RuleID: "dev-1", DeviceID: "dev-1", Metric: "flow_vph",
			Severity: alerts.SeverityCritical, State: alerts.StateFiring, Value: 1200, StartsAt: at0, FiredAt: at0}}, nil))
		require.NoError(t, st.SaveSilence(ctx, alerts.Silence{ID: "dev-1", Start: at0, End: at0.Add(time.Hour)}))
	}
	f.engine = f.open()
	return f
}

// store opens the fixture's SQLite file; the database closes with the test.
func (f *alertFixture) store() *alerts.SQLiteStore {
	f.t.Helper()
	db, err := devices.OpenDB(f.path)
	require.NoError(f.t, err)
	f.t.Cleanup(func() { _ = db.Close() })
	st, err := alerts.NewSQLiteStore(context.Background(), db)
	require.NoError(f.t, err)
	return st
}

// open starts an engine on the fixture's database, as a restart would.
func (f *alertFixture) open() *alerts.Engine {
	f.t.Helper()
	e, err := alerts.NewEngine(context.Background(), alerts.Options{Lookup: f.lookup, Store: f.store(),
		Now: f.clock.now, Registerer: prometheus.NewRegistry()})
	require.NoError(f.t, err)
	return e
}

func (f *alertFixture) install(o *Options) {
	o.Alerts = f.engine
	o.AlertCount = f.engine.ActiveCount
	o.Backtest = f.backtest
}

// backtest is the in-memory BacktestFunc: alerts.Backtest over the
// fixture's readings in [start, stop).
func (f *alertFixture) backtest(ctx context.Context, r alerts.Rule, start, stop time.Time) (alerts.BacktestResult, error) {
	select {
	case f.btCalls <- struct{}{}:
	default: // nobody is counting
	}
	f.mu.Lock()
	gate, btErr := f.btGate, f.btErr
	var rs []telemetry.Reading
	for _, x := range f.readings {
		if !x.Time.Before(start) && x.Time.Before(stop) {
			rs = append(rs, x)
		}
	}
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return alerts.BacktestResult{}, ctx.Err()
		}
	}
	if btErr != nil {
		return alerts.BacktestResult{}, btErr
	}
	iv, err := alerts.Backtest(r, rs)
	return alerts.BacktestResult{Intervals: iv, ReadingsScanned: len(rs)}, err
}

func flow(dev string, ts time.Time, v float64) telemetry.Reading {
	return telemetry.Reading{DeviceID: dev, Time: ts, Values: []telemetry.Value{{Name: "flow_vph", Num: v}}}
}

func newAlertEnv(t *testing.T) (*env, *alertFixture) {
	t.Helper()
	var f *alertFixture
	e := newEnv(t, func(o *Options) {
		f = newAlertFixture(t, o.Devices, false)
		f.install(o)
	})
	e.seed(Device{ID: "tc-1", Domain: "roads", Type: "traffic_counter", Site: "north"})
	e.seed(Device{ID: "tc-2", Domain: "roads", Type: "traffic_counter", Site: "south"})
	return e, f
}

type alertsBody struct {
	Alerts []alerts.Alert `json:"alerts"`
}

func (e *env) alertIDs(query string) []string {
	e.t.Helper()
	r := e.do("GET", "/api/v1/alerts"+query, viewerTok, nil)
	require.Equal(e.t, 200, r.status, "body: %s", r.body)
	var b alertsBody
	require.NoError(e.t, json.Unmarshal(r.body, &b))
	ids := []string{}
	for _, a := range b.Alerts {
		ids = append(ids, a.DeviceID+"/"+a.Metric)
	}
	return ids
}

func TestAlertsListAckResolve(t *testing.T) {
	e, f := newAlertEnv(t)
	for _, rule := range []map[string]any{
		{"name": "busy", "kind": "threshold", "metric": "flow_vph", "op": ">", "value": 100, "severity": "critical", "selector": map[string]any{"domain": "roads"}},
		{"name": "slow", "kind": "threshold", "metric": "speed_kmh", "op": "<", "value": 10},
	} {
		r := e.do("POST", "/api/v1/rules", adminTok, rule)
		require.Equal(t, 201, r.status, "body: %s", r.body)
	}
	f.engine.Consume([]telemetry.Reading{
		flow("tc-1", at0, 150), flow("tc-2", at0.Add(time.Second), 200),
		{DeviceID: "tc-2", Time: at0, Values: []telemetry.Value{{Name: "speed_kmh", Num: 5}}},
	})

	r := e.do("GET", "/api/v1/alerts", viewerTok, nil)
	require.Equal(t, 200, r.status)
	require.Equal(t, []string{"tc-2/flow_vph", "tc-1/flow_vph", "tc-2/speed_kmh"}, e.alertIDs(""), "critical first, then newest")
	for q, want := range map[string][]string{
		"?site=north":       {"tc-1/flow_vph"},
		"?device_id=tc-2":   {"tc-2/flow_vph", "tc-2/speed_kmh"},
		"?severity=warning": {"tc-2/speed_kmh"},
		"?state=firing&severity=critical&site=south": {"tc-2/flow_vph"},
		"?state=acknowledged":                        {},
		"?device_id=nope":                            {},
	} {
		require.Equal(t, want, e.alertIDs(q), q)
	}
	for q, field := range map[string]string{"?state=open": "state", "?severity=fatal": "severity"} {
		r = e.do("GET", "/api/v1/alerts"+q, viewerTok, nil)
		require.Equal(t, 400, r.status, q)
		_, _, fields := r.errorOf(t)
		require.Contains(t, fields, field, q)
	}

	var tc1 alerts.Alert
	r = e.do("GET", "/api/v1/alerts?site=north", viewerTok, nil)
	var list alertsBody
	require.NoError(t, json.Unmarshal(r.body, &list))
	tc1 = list.Alerts[0]
	ackPath := "/api/v1/alerts/" + tc1.ID + "/ack"

	// A viewer cannot acknowledge; an operator can, and who, when and the
	// note are recorded.
	r = e.do("POST", ackPath, viewerTok, map[string]any{"note": "x"})
	require.Equal(t, 403, r.status)
	r = e.do("POST", ackPath, operatorTok, map[string]any{"note": strings.Repeat("n", 2001)})
	require.Equal(t, 400, r.status)
	r = e.do("POST", ackPath, operatorTok, map[string]any{"note": "x", "who": "someone else"})
	require.Equal(t, 400, r.status, "who is the caller, not a field")
	_, _, fields := r.errorOf(t)
	require.Equal(t, map[string]any{"who": "unknown field"}, fields)

	f.clock.set(at0.Add(5 * time.Minute))
	r = e.do("POST", ackPath, operatorTok, map[string]any{"note": "crew on the way"})
	require.Equal(t, 200, r.status, "body: %s", r.body)
	var acked alerts.Alert
	require.NoError(t, json.Unmarshal(r.body, &acked))
	require.Equal(t, alerts.StateAcknowledged, acked.State)
	require.Equal(t, "operator", acked.AckedBy)
	require.Equal(t, "crew on the way", acked.AckNote)
	require.NotNil(t, acked.AckedAt)
	require.True(t, acked.AckedAt.Equal(at0.Add(5*time.Minute)))
	require.Equal(t, []string{"tc-1/flow_vph"}, e.alertIDs("?state=acknowledged"))

	r = e.do("POST", ackPath, adminTok, nil)
	require.Equal(t, 409, r.status, "already acknowledged")
	code, msg, _ := r.errorOf(t)
	require.Equal(t, CodeConflict, code)
	require.Contains(t, msg, "operator")
	r = e.do("POST", "/api/v1/alerts/a-nope/ack", operatorTok, nil)
	require.Equal(t, 404, r.status)
	code, _, _ = r.errorOf(t)
	require.Equal(t, CodeNotFound, code)
	require.Equal(t, 404, e.do("GET", "/api/v1/alerts/a-nope", viewerTok, nil).status)

	// The acknowledgement is in the store: a restarted engine has it.
	again, err := f.open().GetAlert(tc1.ID)
	require.NoError(t, err)
	require.Equal(t, "operator", again.AckedBy)
	require.Equal(t, "crew on the way", again.AckNote)

	// /state counts the engine's open alerts.
	r = e.do("GET", "/api/v1/state", viewerTok, nil)
	var snap Snapshot
	require.NoError(t, json.Unmarshal(r.body, &snap))
	counts := map[string]int{}
	for _, d := range snap.Devices {
		counts[d.ID] = d.ActiveAlerts
	}
	require.Equal(t, map[string]int{"tc-1": 1, "tc-2": 2}, counts)

	// Resolve by hand, with an empty body of unknown length (no note).
	f.clock.set(at0.Add(7 * time.Minute))
	resolvePath := "/api/v1/alerts/" + tc1.ID + "/resolve"
	require.Equal(t, 403, e.do("POST", resolvePath, viewerTok, nil).status)
	r = e.do("POST", resolvePath, operatorTok, strings.NewReader(""))
	require.Equal(t, 200, r.status, "body: %s", r.body)
	var resolved alerts.Alert
	require.NoError(t, json.Unmarshal(r.body, &resolved))
	require.Equal(t, alerts.StateResolved, resolved.State)
	require.Equal(t, "operator", resolved.ResolvedBy)
	require.True(t, resolved.ResolvedAt.Equal(at0.Add(7*time.Minute)))
	require.Equal(t, 409, e.do("POST", resolvePath, operatorTok, nil).status, "already resolved")
	require.Equal(t, 409, e.do("POST", ackPath, operatorTok, nil).status, "resolved cannot be acknowledged")
	require.Equal(t, []string{"tc-1/flow_vph"}, e.alertIDs("?state=resolved"))
	r = e.do("GET", "/api/v1/alerts/"+tc1.ID, viewerTok, nil)
	require.Equal(t, 200, r.status)
	require.Equal(t, "resolved", r.json(t)["state"])

	// Resolve with a note.
	r = e.do("GET", "/api/v1/alerts?device_id=tc-2&severity=warning", viewerTok, nil)
	require.NoError(t, json.Unmarshal(r.body, &list))
	r = e.do("POST", "/api/v1/alerts/"+list.Alerts[0].ID+"/resolve", adminTok, map[string]any{"note": "sensor replaced"})
	require.Equal(t, 200, r.status)
	require.Equal(t, "sensor replaced", r.json(t)["resolve_note"])
	require.Equal(t, "admin", r.json(t)["resolved_by"])
}

func TestAlertRulesAPI(t *testing.T) {
	e, _ := newAlertEnv(t)

	// Validation names each bad field.
	for _, tc := range []struct {
		name   string
		body   string
		fields []string
	}{
		{"engine rules", `{"kind":"threshold","metric":"Flow","op":"==","severity":"fatal","selector":{"device_ids":["bad id"]}}`,
			[]string{"metric", "name", "op", "selector.device_ids", "severity"}},
		{"kind", `{"name":"x"}`, []string{"kind"}},
		{"duration", `{"name":"x","kind":"threshold","metric":"m","op":">","for":"5 minutes"}`, []string{"for"}},
		{"duration type", `{"name":"x","kind":"threshold","metric":"m","op":">","reack_after":true}`, []string{"reack_after"}},
		{"unknown field", `{"name":"x","kind":"threshold","metric":"m","op":">","treshold":5}`, []string{"treshold"}},
		{"wrong type", `{"name":"x","kind":"threshold","metric":"m","op":">","value":"high"}`, []string{"value"}},
		{"nested type", `{"name":"x","kind":"absence","for":"5m","selector":{"device_ids":"tc-1"}}`, []string{"selector.device_ids"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/api/v1/rules", adminTok, tc.body)
			require.Equal(t, 400, r.status, "body: %s", r.body)
			code, _, fields := r.errorOf(t)
			require.Equal(t, CodeValidation, code)
			names := []string{}
			for k := range fields {
				names = append(names, k)
			}
			require.ElementsMatch(t, tc.fields, names)
		})
	}
	r := e.do("POST", "/api/v1/rules", adminTok, `{"name":`)
	require.Equal(t, 400, r.status)
	code, _, _ := r.errorOf(t)
	require.Equal(t, CodeInvalidJSON, code)

	// Create: enabled and warning by default, an id generated.
	r = e.do("POST", "/api/v1/rules", adminTok, map[string]any{"name": "busy", "kind": "threshold", "metric": "flow_vph",
		"op": ">", "value": 1500, "clear_value": 1200, "for": "5m", "selector": map[string]any{"site": "north"}})
	require.Equal(t, 201, r.status, "body: %s", r.body)
	var busy alerts.Rule
	require.NoError(t, json.Unmarshal(r.body, &busy))
	require.NotEmpty(t, busy.ID)
	require.True(t, busy.Enabled)
	require.Equal(t, alerts.SeverityWarning, busy.Severity)
	require.Equal(t, 5*time.Minute, busy.For.D())
	require.Equal(t, "/api/v1/rules/"+busy.ID, r.header.Get("Location"))
	require.Equal(t, "5m", r.json(t)["for"])

	r = e.do("POST", "/api/v1/rules", adminTok, map[string]any{"id": "quiet", "name": "quiet", "enabled": false, "kind": "absence", "for": 600})
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Equal(t, false, r.json(t)["enabled"])
	require.Equal(t, "10m", r.json(t)["for"])
	r = e.do("POST", "/api/v1/rules", adminTok, map[string]any{"id": "quiet", "name": "again", "kind": "absence", "for": 600})
	require.Equal(t, 409, r.status)

	// Read.
	r = e.do("GET", "/api/v1/rules", viewerTok, nil)
	require.Equal(t, 200, r.status)
	var list struct{ Rules []alerts.Rule }
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Rules, 2)
	require.Equal(t, "busy", list.Rules[0].Name)
	require.Equal(t, 200, e.do("GET", "/api/v1/rules/"+alerts.OfflineRuleID, viewerTok, nil).status)
	require.Equal(t, 404, e.do("GET", "/api/v1/rules/nope", viewerTok, nil).status)

	// Update: a GET answer goes back as a PUT body; the id cannot change.
	r = e.do("GET", "/api/v1/rules/"+busy.ID, viewerTok, nil)
	var got map[string]any
	require.NoError(t, json.Unmarshal(r.body, &got))
	got["value"] = 1800
	r = e.do("PUT", "/api/v1/rules/"+busy.ID, adminTok, got)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.EqualValues(t, 1800, r.json(t)["value"])
	got["id"] = "other"
	r = e.do("PUT", "/api/v1/rules/"+busy.ID, adminTok, got)
	require.Equal(t, 400, r.status)
	_, _, fields := r.errorOf(t)
	require.Contains(t, fields, "id")
	delete(got, "id")
	require.Equal(t, 404, e.do("PUT", "/api/v1/rules/nope", adminTok, got).status)
	require.Equal(t, 409, e.do("PUT", "/api/v1/rules/"+alerts.OfflineRuleID, adminTok, got).status)
	got["op"] = "=>"
	r = e.do("PUT", "/api/v1/rules/"+busy.ID, adminTok, got)
	require.Equal(t, 400, r.status)
	_, _, fields = r.errorOf(t)
	require.Contains(t, fields, "op")

	// Operators read rules but do not change them.
	require.Equal(t, 403, e.do("DELETE", "/api/v1/rules/"+busy.ID, operatorTok, nil).status)

	// Delete.
	require.Equal(t, 204, e.do("DELETE", "/api/v1/rules/"+busy.ID, adminTok, nil).status)
	require.Equal(t, 404, e.do("DELETE", "/api/v1/rules/"+busy.ID, adminTok, nil).status)
	require.Equal(t, 404, e.do("GET", "/api/v1/rules/"+busy.ID, viewerTok, nil).status)
	require.Equal(t, 409, e.do("DELETE", "/api/v1/rules/"+alerts.OfflineRuleID, adminTok, nil).status)
}

func TestSilencesAPI(t *testing.T) {
	e, f := newAlertEnv(t)
	r := e.do("GET", "/api/v1/silences", viewerTok, nil)
	require.Equal(t, 200, r.status)
	require.JSONEq(t, `{"silences":[]}`, string(r.body))

	body := map[string]any{"selector": map[string]any{"site": "north"}, "end": at0.Add(2 * time.Hour), "comment": "resurfacing"}
	require.Equal(t, 403, e.do("POST", "/api/v1/silences", viewerTok, body).status)
	r = e.do("POST", "/api/v1/silences", operatorTok, body)
	require.Equal(t, 201, r.status, "body: %s", r.body)
	var s alerts.Silence
	require.NoError(t, json.Unmarshal(r.body, &s))
	require.Equal(t, "operator", s.CreatedBy)
	require.True(t, s.Start.Equal(at0), "start defaults to now")
	require.Equal(t, "north", s.Selector.Site)
	require.Equal(t, "/api/v1/silences/"+s.ID, r.header.Get("Location"))
	// Creating an id that exists is a conflict, not a silent replacement.
	dup := map[string]any{"id": s.ID, "selector": map[string]any{"site": "south"}, "end": at0.Add(time.Minute)}
	require.Equal(t, 409, e.do("POST", "/api/v1/silences", operatorTok, dup).status)

	for _, tc := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"start": at0, "end": at0.Add(-time.Hour)}, "end"},
		{map[string]any{"comment": "no end"}, "end"},
		{map[string]any{"end": at0.Add(time.Hour), "created_by": "someone"}, "created_by"},
		{map[string]any{"end": "tomorrow"}, "end"},
	} {
		r = e.do("POST", "/api/v1/silences", operatorTok, tc.body)
		require.Equal(t, 400, r.status, "body: %s", r.body)
		_, _, fields := r.errorOf(t)
		require.Contains(t, fields, tc.field)
	}

	// The silence works: an alert that fires under it is marked silenced.
	r = e.do("POST", "/api/v1/rules", adminTok, map[string]any{"name": "busy", "kind": "threshold", "metric": "flow_vph", "op": ">", "value": 100})
	require.Equal(t, 201, r.status)
	f.engine.Consume([]telemetry.Reading{flow("tc-1", at0.Add(time.Minute), 500), flow("tc-2", at0.Add(time.Minute), 500)})
	r = e.do("GET", "/api/v1/alerts", viewerTok, nil)
	var list alertsBody
	require.NoError(t, json.Unmarshal(r.body, &list))
	silenced := map[string]bool{}
	for _, a := range list.Alerts {
		silenced[a.DeviceID] = a.Silenced
	}
	require.Equal(t, map[string]bool{"tc-1": true, "tc-2": false}, silenced)

	r = e.do("GET", "/api/v1/silences", viewerTok, nil)
	var sl struct{ Silences []alerts.Silence }
	require.NoError(t, json.Unmarshal(r.body, &sl))
	require.Len(t, sl.Silences, 1)
	require.Equal(t, 403, e.do("DELETE", "/api/v1/silences/"+s.ID, viewerTok, nil).status)
	require.Equal(t, 204, e.do("DELETE", "/api/v1/silences/"+s.ID, operatorTok, nil).status)
	require.Equal(t, 404, e.do("DELETE", "/api/v1/silences/"+s.ID, operatorTok, nil).status)
}

func TestAlertRoutesWithoutEngine(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Alerts, o.Backtest, o.AlertCount = nil, nil, nil })
	for _, p := range []string{"/api/v1/alerts", "/api/v1/rules", "/api/v1/silences"} {
		r := e.do("GET", p, viewerTok, nil)
		require.Equal(t, 503, r.status, p)
		code, _, _ := r.errorOf(t)
		require.Equal(t, CodeNotReady, code)
	}
	r := e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule_id": "x"})
	require.Equal(t, 503, r.status)
}

type backtestBody struct {
	Alerts    int `json:"alerts"`
	Intervals []struct {
		DeviceID  string     `json:"device_id"`
		Start     time.Time  `json:"start"`
		End       *time.Time `json:"end"`
		DurationS float64    `json:"duration_s"`
		Value     float64    `json:"value"`
	} `json:"intervals"`
	ReadingsScanned int       `json:"readings_scanned"`
	Start           time.Time `json:"start"`
	Stop            time.Time `json:"stop"`
}

func TestBacktestRequests(t *testing.T) {
	e, f := newAlertEnv(t)
	now := time.Now().UTC().Truncate(time.Minute)
	f.mu.Lock()
	for i, v := range []float64{100, 900, 950, 100, 900, 990} {
		f.readings = append(f.readings, flow("tc-1", now.Add(time.Duration(i-10)*time.Minute), v))
	}
	f.mu.Unlock()
	rule := map[string]any{"name": "busy", "kind": "threshold", "metric": "flow_vph", "op": ">", "value": 800, "for": "1m"}

	r := e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule": rule, "start": "-1h"})
	require.Equal(t, 200, r.status, "body: %s", r.body)
	var got backtestBody
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, 2, got.Alerts)
	require.Equal(t, 6, got.ReadingsScanned)
	require.Len(t, got.Intervals, 2)
	first, second := got.Intervals[0], got.Intervals[1]
	require.True(t, first.Start.Equal(now.Add(-8*time.Minute)), first.Start)
	require.True(t, first.End.Equal(now.Add(-7*time.Minute)))
	require.Equal(t, 60.0, first.DurationS)
	require.Equal(t, 900.0, first.Value)
	require.True(t, second.Start.Equal(now.Add(-5*time.Minute)))
	require.Nil(t, second.End, "still open at stop")
	require.InDelta(t, got.Stop.Sub(second.Start).Seconds(), second.DurationS, 0.001)
	require.WithinDuration(t, time.Now().Add(-time.Hour), got.Start, time.Minute)

	// A stored rule by id; an absolute range.
	r = e.do("POST", "/api/v1/rules", adminTok, rule)
	require.Equal(t, 201, r.status)
	id := r.json(t)["id"].(string)
	r = e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule_id": id,
		"start": now.Add(-9 * time.Minute).Format(time.RFC3339), "stop": now.Add(-6 * time.Minute).Format(time.RFC3339)})
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, 1, got.Alerts)
	require.Equal(t, 3, got.ReadingsScanned)
	require.Equal(t, 404, e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule_id": "nope"}).status)

	// Bad requests name their fields; rule fields under "rule.".
	bad := map[string]any{"name": "x", "kind": "threshold", "op": ">"}
	for _, tc := range []struct {
		body   map[string]any
		fields []string
	}{
		{map[string]any{}, []string{"rule"}},
		{map[string]any{"rule": rule, "rule_id": id}, []string{"rule_id"}},
		{map[string]any{"rule": rule, "start": "last week", "stop": "-1x"}, []string{"start", "stop"}},
		{map[string]any{"rule": bad}, []string{"rule.metric"}},
		{map[string]any{"rule": map[string]any{"name": "x", "kind": "absence", "for": "soon"}}, []string{"rule.for"}},
		{map[string]any{"rule": rule, "limit": 5}, []string{"limit"}},
	} {
		r = e.do("POST", "/api/v1/rules/backtest", operatorTok, tc.body)
		require.Equal(t, 400, r.status, "body: %s", r.body)
		_, _, fields := r.errorOf(t)
		names := []string{}
		for k := range fields {
			names = append(names, k)
		}
		require.ElementsMatch(t, tc.fields, names, "%v", tc.body)
	}

	// Too many readings is the client's to fix: 400 naming the range.
	f.mu.Lock()
	f.btErr = fmt.Errorf("backtest: %w: more than 10 values", alerts.ErrTooManyReadings)
	f.mu.Unlock()
	r = e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule": rule})
	require.Equal(t, 400, r.status)
	_, msg, fields := r.errorOf(t)
	require.Contains(t, fields, "start")
	require.Contains(t, msg, "too many readings")
	f.mu.Lock()
	f.btErr = nil
	f.mu.Unlock()
}

func TestBacktestConcurrencyBound(t *testing.T) {
	e, f := newAlertEnv(t)
	gate := make(chan struct{})
	f.mu.Lock()
	f.btGate = gate
	f.mu.Unlock()
	rule := map[string]any{"name": "busy", "kind": "threshold", "metric": "flow_vph", "op": ">", "value": 800}
	var wg sync.WaitGroup
	statuses := make(chan int, maxConcurrentBacktests)
	for range maxConcurrentBacktests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses <- e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule": rule}).status
		}()
	}
	for range maxConcurrentBacktests {
		<-f.btCalls
	}
	r := e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule": rule})
	require.Equal(t, 429, r.status)
	require.Equal(t, "5", r.header.Get("Retry-After"))
	close(gate)
	wg.Wait()
	close(statuses)
	for s := range statuses {
		require.Equal(t, 200, s)
	}
	require.Equal(t, 200, e.do("POST", "/api/v1/rules/backtest", operatorTok, map[string]any{"rule": rule}).status)
}

func TestParseBacktestTime(t *testing.T) {
	now := time.Date(2026, 3, 9, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                          now,
		"now":                       now,
		"-7d":                       now.Add(-7 * 24 * time.Hour),
		"-2w":                       now.Add(-14 * 24 * time.Hour),
		"-36h":                      now.Add(-36 * time.Hour),
		"-1h30m":                    now.Add(-90 * time.Minute),
		"2026-03-02T08:00:00Z":      time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC),
		"2026-03-02T09:00:00+01:00": time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC),
	} {
		got, err := parseBacktestTime(in, now)
		require.NoError(t, err, in)
		require.True(t, want.Equal(got), "%s: %s", in, got)
	}
	for _, in := range []string{"7d", "-d", "-1.5d", "yesterday", "+1h", "1h", "-99999d", "2026-03-02"} {
		_, err := parseBacktestTime(in, now)
		require.Error(t, err, in)
	}
}

// TestBacktestFromInflux runs the route on the real path: readings written
// to a real InfluxDB 1.8, read back by alerts.BacktestSource with Flux.
func TestBacktestFromInflux(t *testing.T) {
	srv := testenv.OwnInflux(t)
	ctx := context.Background()
	st, err := store.New(ctx, store.Options{URL: srv.URL, Bucket: testenv.NewDB(t), CreateDatabase: true})
	require.NoError(t, err)
	t.Cleanup(st.Close)

	var f *alertFixture
	e := newEnv(t, func(o *Options) {
		f = newAlertFixture(t, o.Devices, false)
		f.install(o)
		o.Backtest = alerts.BacktestSource{Querier: st, Bucket: st.Bucket(), Lookup: registryLookup(o.Devices)}.Backtest
	})
	e.seed(Device{ID: "tc-1", Domain: "roads", Type: "traffic_counter", Site: "north", Tags: map[string]string{"lane": "2"}})
	e.seed(Device{ID: "tc-2", Domain: "roads", Type: "traffic_counter", Site: "north", Tags: map[string]string{"lane": "1"}})

	var buf []byte
	n := 0
	write := func(dev string, i int, v float64) {
		tags := []store.Tag{{Key: "device_id", Value: dev}, {Key: "domain", Value: "roads"}, {Key: "site", Value: "north"}}
		buf = store.AppendPoint(buf, "traffic_counter", tags, []telemetry.Value{{Name: "flow_vph", Num: v}}, at0.Add(time.Duration(i)*time.Minute))
		n++
	}
	// tc-1: over 800 from 1m, fires at 3m (for 2m), clears at 5m; over
	// again from 7m, fires at 9m, open at stop. tc-2 is over all along but
	// has another lane.
	for i, v := range []float64{100, 900, 950, 960, 990, 100, 100, 900, 950, 990, 995, 100} {
		write("tc-1", i, v)
		write("tc-2", i, 999)
	}
	require.NoError(t, st.WriteLines(ctx, buf, n))

	req := map[string]any{
		"rule": map[string]any{"name": "busy", "kind": "threshold", "metric": "flow_vph", "op": ">", "value": 800, "for": "2m",
			"selector": map[string]any{"type": "traffic_counter", "tags": map[string]any{"lane": "2"}}},
		"start": at0.Format(time.RFC3339), "stop": at0.Add(11 * time.Minute).Format(time.RFC3339),
	}
	r := e.do("POST", "/api/v1/rules/backtest", operatorTok, req)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.JSONEq(t, `{
		"alerts": 2,
		"intervals": [
			{"device_id": "tc-1", "start": "2026-03-02T08:03:00Z", "end": "2026-03-02T08:05:00Z", "duration_s": 120, "value": 950, "since": "2026-03-02T08:01:00Z"},
			{"device_id": "tc-1", "start": "2026-03-02T08:09:00Z", "end": null, "duration_s": 120, "value": 950, "since": "2026-03-02T08:07:00Z"}
		],
		"truncated": false,
		"readings_scanned": 22,
		"start": "2026-03-02T08:00:00Z",
		"stop": "2026-03-02T08:11:00Z"
	}`, string(r.body))

	// The bound on what one backtest reads is a 400 for the client.
	e2 := newEnv(t, func(o *Options) {
		o.Backtest = alerts.BacktestSource{Querier: st, Bucket: st.Bucket(), MaxReadings: 5}.Backtest
	})
	delete(req["rule"].(map[string]any)["selector"].(map[string]any), "tags")
	r = e2.do("POST", "/api/v1/rules/backtest", operatorTok, req)
	require.Equal(t, 400, r.status, "body: %s", r.body)
	_, _, fields := r.errorOf(t)
	require.Contains(t, fields["start"], "more than 5")
}
