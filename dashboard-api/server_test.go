package dashboardapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	viewerTok   = "viewer-secret"
	operatorTok = "operator-secret"
	adminTok    = "admin-secret"
)

// env is one API server under httptest with its fakes.
type env struct {
	t       *testing.T
	srv     *httptest.Server
	api     *Server
	devices *fakeDevices
	live    *fakeLive
	tokens  *fakeTokens
	logs    *logBuffer
}

// envHooks and extraAuthCases are extended from init functions in the test
// files of features that add routes, so that those files, not this one,
// hold their fakes and their rows of the auth matrix.
var (
	envHooks       []func(t *testing.T, o *Options)
	extraAuthCases []func() []authCase
)

func newEnv(t *testing.T, mod ...func(*Options)) *env {
	t.Helper()
	e := &env{t: t, devices: newFakeDevices(), live: &fakeLive{states: map[string]DeviceState{}},
		tokens: newFakeTokens(), logs: &logBuffer{}}
	opts := Options{
		Devices: e.devices, Live: e.live, Tokens: e.tokens,
		Registerer: prometheus.NewRegistry(),
		Logger:     slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	opts.Gatherer = opts.Registerer.(prometheus.Gatherer)
	// Features in their own files (alerts, history, stream) plug their
	// fakes in through envHooks, so every test router has every route.
	for _, h := range envHooks {
		h(t, &opts)
	}
	for _, m := range mod {
		m(&opts)
	}
	api, err := New(opts)
	require.NoError(t, err)
	e.api = api
	e.srv = httptest.NewServer(api.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), "body: %s", r.body)
	return m
}

// errorOf checks the API's error shape and returns code, message and fields.
func (r response) errorOf(t *testing.T) (string, string, map[string]any) {
	t.Helper()
	require.Contains(t, r.header.Get("Content-Type"), "application/json")
	m := r.json(t)
	require.Len(t, m, 1, "error body has only the error member: %s", r.body)
	e, ok := m["error"].(map[string]any)
	require.True(t, ok, "body: %s", r.body)
	code, _ := e["code"].(string)
	msg, _ := e["message"].(string)
	require.NotEmpty(t, code)
	require.NotEmpty(t, msg)
	fields, _ := e["fields"].(map[string]any)
	return code, msg, fields
}

func (e *env) do(method, path, token string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		raw, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.srv.Client().Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return response{status: resp.StatusCode, header: resp.Header, body: raw}
}

// seed registers a device directly in the fake registry.
func (e *env) seed(d Device) {
	e.t.Helper()
	if d.Name == "" {
		d.Name = d.ID
	}
	_, err := e.devices.Create(context.Background(), d)
	require.NoError(e.t, err)
}

// logBuffer is the server's log, with a reader of its JSON records.
type logBuffer struct{ testenv.LogBuffer }

// records returns the JSON log records with the given message.
func (l *logBuffer) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m))
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func validDevice(id string) map[string]any {
	return map[string]any{
		"id": id, "name": "Counter " + id, "domain": "roads", "type": "traffic_counter", "site": "a12-km3",
		"location": map[string]any{"lat": 52.1, "lon": 5.2}, "expected_interval": 60,
		"metrics": map[string]any{"flow_vph": map[string]any{"unit": "veh/h", "min": 0, "max": 4000}},
		"tags":    map[string]any{"lane": "2"},
	}
}

// authCase is one route with a request that succeeds for a permitted role.
type authCase struct {
	method, path string
	body         func() any
	min          Role // 0: no authentication
	ok           int
}

func authCases() []authCase {
	return []authCase{
		{"GET", "/healthz", nil, 0, 200},
		{"GET", "/readyz", nil, 0, 200},
		{"GET", "/metrics", nil, 0, 200},
		{"GET", "/api/v1/openapi.json", nil, 0, 200},
		{"GET", "/api/v1/devices", nil, RoleViewer, 200},
		{"POST", "/api/v1/devices", func() any { return validDevice("new-1") }, RoleAdmin, 201},
		{"GET", "/api/v1/devices/:id", nil, RoleViewer, 200},
		{"PUT", "/api/v1/devices/:id", func() any { return validDevice("dev-1") }, RoleAdmin, 200},
		{"DELETE", "/api/v1/devices/:id", nil, RoleAdmin, 204},
		{"GET", "/api/v1/devices/:id/latest", nil, RoleViewer, 200},
		{"GET", "/api/v1/state", nil, RoleViewer, 200},
		{"GET", "/api/v1/tokens", nil, RoleAdmin, 200},
		{"POST", "/api/v1/tokens", func() any { return map[string]any{"name": "crew", "role": "operator"} }, RoleAdmin, 201},
		{"DELETE", "/api/v1/tokens/:id", nil, RoleAdmin, 204},
	}
}

// allAuthCases is authCases plus the rows of features in other files.
func allAuthCases() []authCase {
	cases := authCases()
	for _, f := range extraAuthCases {
		cases = append(cases, f()...)
	}
	return cases
}

func TestAuthMatrix(t *testing.T) {
	callers := []struct {
		name  string
		token string
		role  Role
	}{
		{"none", "", 0},
		{"bad", "not-a-token", 0},
		{"viewer", viewerTok, RoleViewer},
		{"operator", operatorTok, RoleOperator},
		{"admin", adminTok, RoleAdmin},
	}
	for _, rc := range allAuthCases() {
		for _, who := range callers {
			t.Run(rc.method+" "+rc.path+" as "+who.name, func(t *testing.T) {
				e := newEnv(t)
				e.seed(Device{ID: "dev-1", Domain: "roads"})
				path := rc.path
				if strings.HasPrefix(path, "/api/v1/tokens/") {
					path = strings.Replace(path, ":id", "t-viewer", 1)
				}
				path = strings.Replace(path, ":id", "dev-1", 1)
				var body any
				if rc.body != nil {
					body = rc.body()
				}
				r := e.do(rc.method, path, who.token, body)
				want := rc.ok
				switch {
				case rc.min == 0:
				case who.role == 0:
					want = http.StatusUnauthorized
				case who.role < rc.min:
					want = http.StatusForbidden
				}
				require.Equal(t, want, r.status, "body: %s", r.body)
				if want >= 400 {
					code, _, _ := r.errorOf(t)
					if want == 401 {
						require.Equal(t, CodeUnauthorized, code)
						require.Contains(t, r.header.Get("WWW-Authenticate"), "Bearer")
					} else if want == 403 { // a route's own ok may be 4xx (the stream's 400 to a plain GET)
						require.Equal(t, CodeForbidden, code)
					}
				}
			})
		}
	}
}

// TestAuthMatrixCoversRoutes keeps the matrix honest: a new route must be
// added to it (with its role) or this fails.
func TestAuthMatrixCoversRoutes(t *testing.T) {
	e := newEnv(t)
	inMatrix := map[string]bool{}
	for _, rc := range allAuthCases() {
		inMatrix[rc.method+" "+rc.path] = true
	}
	for _, r := range e.api.Engine().Routes() {
		require.True(t, inMatrix[r.Method+" "+r.Path], "route %s %s is missing from authCases", r.Method, r.Path)
	}
	require.Len(t, e.api.Engine().Routes(), len(inMatrix))
}

func TestBearerSchemeCaseInsensitive(t *testing.T) {
	e := newEnv(t)
	req, err := http.NewRequest("GET", e.srv.URL+"/api/v1/devices", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "bearer "+viewerTok)
	resp, err := e.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)

	req.Header.Set("Authorization", "Basic "+viewerTok)
	resp, err = e.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 401, resp.StatusCode)
}

func TestDeviceCRUD(t *testing.T) {
	e := newEnv(t)

	// Create: 201, Location, the generated secret, the stored fields.
	r := e.do("POST", "/api/v1/devices", adminTok, validDevice("tc-1"))
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Equal(t, "/api/v1/devices/tc-1", r.header.Get("Location"))
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	var created Device
	require.NoError(t, json.Unmarshal(r.body, &created))
	require.Equal(t, "generated-tc-1", created.Secret)
	require.Equal(t, "Counter tc-1", created.Name)
	require.Equal(t, &Location{Lat: 52.1, Lon: 5.2}, created.Location)
	require.Equal(t, 60, created.ExpectedInterval)
	require.Equal(t, "veh/h", created.Metrics["flow_vph"].Unit)
	require.Equal(t, "unknown", r.json(t)["status"])

	// Duplicate: 409.
	r = e.do("POST", "/api/v1/devices", adminTok, validDevice("tc-1"))
	require.Equal(t, 409, r.status)
	code, _, _ := r.errorOf(t)
	require.Equal(t, CodeConflict, code)

	// Get and list: no secret.
	r = e.do("GET", "/api/v1/devices/tc-1", viewerTok, nil)
	require.Equal(t, 200, r.status)
	require.NotContains(t, r.json(t), "secret")
	require.NotContains(t, string(r.body), "generated-tc-1")

	e.seed(Device{ID: "rt-1", Domain: "network", Type: "router", Site: "dc1", Secret: "s"})
	e.live.set(DeviceState{DeviceID: "rt-1", Status: "online"})
	r = e.do("GET", "/api/v1/devices", viewerTok, nil)
	require.Equal(t, 200, r.status)
	var list struct{ Devices []map[string]any }
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Devices, 2)
	require.Equal(t, "rt-1", list.Devices[0]["id"], "sorted by id")
	for _, d := range list.Devices {
		require.NotContains(t, d, "secret")
	}

	// Filters: registry fields, and status from live state.
	for _, tc := range []struct {
		query string
		ids   []string
	}{
		{"?domain=roads", []string{"tc-1"}},
		{"?domain=network&site=dc1&type=router", []string{"rt-1"}},
		{"?status=online", []string{"rt-1"}},
		{"?status=unknown", []string{"tc-1"}},
		{"?status=offline", []string{}},
		{"?domain=rail", []string{}},
	} {
		r = e.do("GET", "/api/v1/devices"+tc.query, viewerTok, nil)
		require.Equal(t, 200, r.status, tc.query)
		require.NoError(t, json.Unmarshal(r.body, &list))
		ids := []string{}
		for _, d := range list.Devices {
			ids = append(ids, d["id"].(string))
		}
		require.Equal(t, tc.ids, ids, tc.query)
	}
	r = e.do("GET", "/api/v1/devices?status=sleepy", viewerTok, nil)
	require.Equal(t, 400, r.status)
	_, _, fields := r.errorOf(t)
	require.Contains(t, fields, "status")

	// Update without a secret: keeps it and does not show it.
	upd := validDevice("tc-1")
	upd["name"] = "Renamed"
	upd["lifecycle"] = "maintenance"
	r = e.do("PUT", "/api/v1/devices/tc-1", adminTok, upd)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.Equal(t, "Renamed", r.json(t)["name"])
	require.Equal(t, "maintenance", r.json(t)["lifecycle"])
	require.NotContains(t, r.json(t), "secret")
	require.Equal(t, "generated-tc-1", e.devices.secret("tc-1"))

	// A GET answer can be sent back as a PUT body (read-only fields ignored).
	r = e.do("GET", "/api/v1/devices/tc-1", viewerTok, nil)
	r = e.do("PUT", "/api/v1/devices/tc-1", adminTok, r.body)
	require.Equal(t, 200, r.status, "body: %s", r.body)

	// Id in body must match the path.
	r = e.do("PUT", "/api/v1/devices/tc-1", adminTok, validDevice("tc-2"))
	require.Equal(t, 400, r.status)
	_, _, fields = r.errorOf(t)
	require.Contains(t, fields, "id")

	// Update of a missing device.
	r = e.do("PUT", "/api/v1/devices/nope", adminTok, map[string]any{"name": "x"})
	require.Equal(t, 404, r.status)

	// Delete, then it is gone.
	r = e.do("DELETE", "/api/v1/devices/tc-1", adminTok, nil)
	require.Equal(t, 204, r.status)
	require.Empty(t, r.body)
	r = e.do("GET", "/api/v1/devices/tc-1", viewerTok, nil)
	require.Equal(t, 404, r.status)
	code, msg, _ := r.errorOf(t)
	require.Equal(t, CodeNotFound, code)
	require.Contains(t, msg, "tc-1")
	r = e.do("DELETE", "/api/v1/devices/tc-1", adminTok, nil)
	require.Equal(t, 404, r.status)
}

func TestSecretReturnedOnlyOnCreateAndRotate(t *testing.T) {
	e := newEnv(t)
	d := validDevice("ups-1")
	d["secret"] = "chosen-password"
	r := e.do("POST", "/api/v1/devices", adminTok, d)
	require.Equal(t, 201, r.status)
	require.Equal(t, "chosen-password", r.json(t)["secret"])

	for _, path := range []string{"/api/v1/devices/ups-1", "/api/v1/devices", "/api/v1/devices/ups-1/latest", "/api/v1/state"} {
		r = e.do("GET", path, adminTok, nil)
		require.Equal(t, 200, r.status)
		require.NotContains(t, string(r.body), "chosen-password", path)
		require.NotContains(t, string(r.body), `"secret"`, path)
	}

	d["secret"] = "rotated-password"
	r = e.do("PUT", "/api/v1/devices/ups-1", adminTok, d)
	require.Equal(t, 200, r.status)
	require.Equal(t, "rotated-password", r.json(t)["secret"])
	require.Equal(t, "rotated-password", e.devices.secret("ups-1"))
	r = e.do("GET", "/api/v1/devices/ups-1", adminTok, nil)
	require.NotContains(t, string(r.body), "rotated-password")
}

func TestValidationErrors(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name   string
		path   string
		body   string
		code   string
		fields map[string]any
	}{
		{"service validation", "/api/v1/devices", `{"id":"bad id!","domain":"roads"}`, CodeValidation,
			map[string]any{"id": "must match ^[A-Za-z0-9_-]{1,64}$", "name": "required"}},
		{"unknown field", "/api/v1/devices", `{"id":"a","name":"a","colour":"red"}`, CodeValidation,
			map[string]any{"colour": "unknown field"}},
		{"unknown nested field", "/api/v1/devices", `{"id":"a","name":"a","location":{"lat":1,"lon":2,"alt":3}}`, CodeValidation,
			map[string]any{"alt": "unknown field"}},
		{"wrong type", "/api/v1/devices", `{"id":"a","name":"a","expected_interval":"60s"}`, CodeValidation,
			map[string]any{"expected_interval": "must be an integer"}},
		{"wrong nested type", "/api/v1/devices", `{"id":"a","name":"a","location":{"lat":"north","lon":2}}`, CodeValidation,
			map[string]any{"location.lat": "must be a number"}},
		{"malformed", "/api/v1/devices", `{"id":`, CodeInvalidJSON, nil},
		{"syntax", "/api/v1/devices", `{"id" "a"}`, CodeInvalidJSON, nil},
		{"empty", "/api/v1/devices", ``, CodeInvalidJSON, nil},
		{"not an object", "/api/v1/devices", `[1,2]`, CodeInvalidJSON, nil},
		{"trailing data", "/api/v1/devices", `{"id":"a","name":"a"} {"id":"b"}`, CodeInvalidJSON, nil},
		{"token fields", "/api/v1/tokens", `{"name":"  ","role":"root"}`, CodeValidation,
			map[string]any{"name": "required", "role": "must be viewer, operator or admin"}},
		{"token unknown field", "/api/v1/tokens", `{"name":"a","role":"viewer","expires":"never"}`, CodeValidation,
			map[string]any{"expires": "unknown field"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", tc.path, adminTok, tc.body)
			require.Equal(t, 400, r.status, "body: %s", r.body)
			code, _, fields := r.errorOf(t)
			require.Equal(t, tc.code, code)
			if tc.fields != nil {
				require.Equal(t, tc.fields, fields)
			}
		})
	}
	require.Empty(t, e.devices.List(DeviceFilter{}), "nothing was created")
}

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxBodyBytes = 256 })
	d := validDevice("big")
	d["name"] = strings.Repeat("x", 1000)

	// Declared length over the limit.
	r := e.do("POST", "/api/v1/devices", adminTok, d)
	require.Equal(t, 413, r.status)
	code, msg, _ := r.errorOf(t)
	require.Equal(t, CodeTooLarge, code)
	require.Contains(t, msg, "256")

	// Unknown length (chunked): fails while reading.
	raw, _ := json.Marshal(d)
	r = e.do("POST", "/api/v1/devices", adminTok, io.MultiReader(bytes.NewReader(raw)))
	require.Equal(t, 413, r.status)
	code, _, _ = r.errorOf(t)
	require.Equal(t, CodeTooLarge, code)

	// Within the limit still works.
	r = e.do("POST", "/api/v1/tokens", adminTok, map[string]any{"name": "n", "role": "viewer"})
	require.Equal(t, 201, r.status)
}

func TestUnknownRouteAndMethod(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/api/v1/nothing-here", adminTok, nil)
	require.Equal(t, 404, r.status)
	code, _, _ := r.errorOf(t)
	require.Equal(t, CodeNotFound, code)

	r = e.do("GET", "/api/v1/devices/", adminTok, nil)
	require.Equal(t, 404, r.status, "no redirect on a trailing slash")

	r = e.do("PATCH", "/api/v1/devices/x", adminTok, `{}`)
	require.Equal(t, 405, r.status)
	code, _, _ = r.errorOf(t)
	require.Equal(t, CodeMethodNotAllowed, code)
	require.Contains(t, r.header.Get("Allow"), "PUT")
}

func TestInternalErrorsAndPanics(t *testing.T) {
	e := newEnv(t)
	e.api.API().GET("/boom", RequireRole(RoleViewer), func(c *gin.Context) {
		panic("database password is hunter2")
	})
	e.api.API().GET("/fail", RequireRole(RoleViewer), func(c *gin.Context) {
		_ = c.Error(errors.New("query influx at 10.0.0.5: secret detail"))
	})
	e.api.Engine().GET("/unprotected-role", RequireRole(RoleViewer), func(c *gin.Context) { c.Status(200) })

	for _, path := range []string{"/api/v1/boom", "/api/v1/fail"} {
		r := e.do("GET", path, viewerTok, nil)
		require.Equal(t, 500, r.status)
		code, msg, _ := r.errorOf(t)
		require.Equal(t, CodeInternal, code)
		require.Equal(t, "internal server error", msg)
		require.NotContains(t, string(r.body), "hunter2")
		require.NotContains(t, string(r.body), "secret detail")
		require.NotContains(t, string(r.body), "goroutine")
		require.NotEmpty(t, r.header.Get("X-Request-Id"))
	}
	logs := e.logs.String()
	require.Contains(t, logs, "hunter2", "the panic is logged")
	require.Contains(t, logs, "secret detail", "the detail is logged")
	require.Len(t, e.logs.records(t, "panic in handler"), 1)
	require.Len(t, e.logs.records(t, "request failed"), 1, "a panic is logged once, with its stack")

	// RequireRole outside the authenticated group fails closed.
	r := e.do("GET", "/unprotected-role", viewerTok, nil)
	require.Equal(t, 401, r.status)
}

func TestAccessLog(t *testing.T) {
	e := newEnv(t)
	e.api.API().GET("/boom", func(c *gin.Context) { panic("x") })
	e.do("GET", "/api/v1/devices?token=leak", viewerTok, nil)
	e.do("GET", "/api/v1/boom", viewerTok, nil)

	recs := e.logs.records(t, "http request")
	require.Len(t, recs, 2)
	require.Equal(t, "DEBUG", recs[0]["level"])
	require.Equal(t, "GET", recs[0]["method"])
	require.Equal(t, "/api/v1/devices", recs[0]["path"])
	require.EqualValues(t, 200, recs[0]["status"])
	require.Contains(t, recs[0], "duration")
	require.NotContains(t, e.logs.String(), "leak", "queries may hold tokens and are not logged")
	require.Equal(t, "ERROR", recs[1]["level"])
	require.EqualValues(t, 500, recs[1]["status"])
}

func TestLatest(t *testing.T) {
	e := newEnv(t)
	e.seed(Device{ID: "ws-1", Domain: "roads", Type: "weather", Metrics: map[string]MetricSpec{"surface_temp_c": {Unit: "°C"}}})
	ts := time.Date(2025, 11, 26, 8, 0, 0, 0, time.UTC)

	r := e.do("GET", "/api/v1/devices/ws-1/latest", viewerTok, nil)
	require.Equal(t, 200, r.status)
	require.JSONEq(t, `{"device_id":"ws-1","status":"unknown","last_seen":null,"metrics":{}}`, string(r.body))

	e.live.set(DeviceState{DeviceID: "ws-1", Status: "stale", LastSeen: &ts, Metrics: map[string]MetricValue{
		"surface_temp_c": {Value: -1.5, Time: ts}, "ice_warning": {Value: true, Time: ts}}})
	r = e.do("GET", "/api/v1/devices/ws-1/latest", viewerTok, nil)
	require.Equal(t, 200, r.status)
	require.JSONEq(t, `{"device_id":"ws-1","status":"stale","last_seen":"2025-11-26T08:00:00Z","metrics":{
		"surface_temp_c":{"value":-1.5,"ts":"2025-11-26T08:00:00Z","unit":"°C"},
		"ice_warning":{"value":true,"ts":"2025-11-26T08:00:00Z"}}}`, string(r.body))

	r = e.do("GET", "/api/v1/devices/nope/latest", viewerTok, nil)
	require.Equal(t, 404, r.status)
}

func TestState(t *testing.T) {
	alerts := map[string]int{"tc-1": 2}
	e := newEnv(t, func(o *Options) { o.AlertCount = func(id string) int { return alerts[id] } })
	e.seed(Device{ID: "tc-1", Name: "A12 km 3", Domain: "roads", Type: "traffic_counter", Site: "a12", Location: &Location{Lat: 52, Lon: 5}})
	e.seed(Device{ID: "bus-7", Domain: "transport", Type: "bus", Site: "depot-n"})
	e.seed(Device{ID: "rt-1", Domain: "network", Type: "router", Site: "dc1"})
	ts := time.Date(2025, 11, 26, 8, 0, 0, 0, time.UTC)
	e.live.set(DeviceState{DeviceID: "tc-1", Status: "online", LastSeen: &ts, Metrics: map[string]MetricValue{"flow_vph": {Value: 1260.0, Time: ts}}})

	r := e.do("GET", "/api/v1/state", viewerTok, nil)
	require.Equal(t, 200, r.status)
	var snap Snapshot
	require.NoError(t, json.Unmarshal(r.body, &snap))
	require.False(t, snap.Time.IsZero())
	require.Len(t, snap.Devices, 3)
	require.Equal(t, []string{"bus-7", "rt-1", "tc-1"}, []string{snap.Devices[0].ID, snap.Devices[1].ID, snap.Devices[2].ID})
	tc := snap.Devices[2]
	require.Equal(t, "A12 km 3", tc.Name)
	require.Equal(t, "roads", tc.Domain)
	require.Equal(t, "traffic_counter", tc.Type)
	require.Equal(t, "a12", tc.Site)
	require.Equal(t, &Location{Lat: 52, Lon: 5}, tc.Location)
	require.Equal(t, "online", tc.Status)
	require.Equal(t, 2, tc.ActiveAlerts)
	require.Equal(t, 1260.0, tc.Metrics["flow_vph"].Value)
	require.Equal(t, "unknown", snap.Devices[0].Status)
	require.Equal(t, 0, snap.Devices[0].ActiveAlerts)

	for _, c := range []struct {
		query string
		n     int
	}{
		{"?domain=roads", 1},
		{"?domain=roads&domain=network", 2},
		{"?site=dc1", 1},
		{"?domain=roads&site=dc1", 0},
		{"?domain=", 3},
	} {
		r = e.do("GET", "/api/v1/state"+c.query, viewerTok, nil)
		require.Equal(t, 200, r.status)
		require.NoError(t, json.Unmarshal(r.body, &snap))
		require.Len(t, snap.Devices, c.n, c.query)
	}
}

func TestTokens(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/api/v1/tokens", adminTok, map[string]any{"name": "night crew", "role": "operator"})
	require.Equal(t, 201, r.status, "body: %s", r.body)
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	created := r.json(t)
	secret := created["token"].(string)
	require.NotEmpty(t, secret)
	require.Equal(t, "operator", created["role"])
	require.Equal(t, "night crew", created["name"])

	// The new token works, with its role.
	require.Equal(t, 200, e.do("GET", "/api/v1/devices", secret, nil).status)
	require.Equal(t, 403, e.do("GET", "/api/v1/tokens", secret, nil).status)

	r = e.do("GET", "/api/v1/tokens", adminTok, nil)
	require.Equal(t, 200, r.status)
	require.NotContains(t, string(r.body), secret)
	var list struct{ Tokens []Token }
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Tokens, 4)
	require.Equal(t, "t-viewer", list.Tokens[0].ID, "oldest first")

	r = e.do("DELETE", "/api/v1/tokens/"+created["id"].(string), adminTok, nil)
	require.Equal(t, 204, r.status)
	require.Equal(t, 401, e.do("GET", "/api/v1/devices", secret, nil).status, "a revoked token is refused")
	require.Equal(t, 404, e.do("DELETE", "/api/v1/tokens/"+created["id"].(string), adminTok, nil).status)
}

func TestHealthAndReady(t *testing.T) {
	var fail error
	var mu sync.Mutex
	e := newEnv(t, func(o *Options) {
		o.Ready = func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			if _, ok := ctx.Deadline(); !ok {
				return errors.New("no deadline")
			}
			return fail
		}
	})
	r := e.do("GET", "/healthz", "", nil)
	require.Equal(t, 200, r.status)
	require.JSONEq(t, `{"status":"ok"}`, string(r.body))
	r = e.do("GET", "/readyz", "", nil)
	require.Equal(t, 200, r.status, "body: %s", r.body)

	mu.Lock()
	fail = fmt.Errorf("influxdb: ping http://127.0.0.1:8086: connection refused")
	mu.Unlock()
	r = e.do("GET", "/readyz", "", nil)
	require.Equal(t, 503, r.status)
	code, msg, _ := r.errorOf(t)
	require.Equal(t, CodeNotReady, code)
	require.Contains(t, msg, "influxdb")
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	e.do("GET", "/api/v1/devices", viewerTok, nil)
	e.do("GET", "/api/v1/devices/x", viewerTok, nil)
	e.do("GET", "/api/v1/devices", "", nil)
	e.do("GET", "/no/such/path/123", "", nil)
	r := e.do("GET", "/metrics", "", nil)
	require.Equal(t, 200, r.status)
	body := string(r.body)
	require.Contains(t, body, `infrawatch_http_requests_total{code="200",method="GET",route="/api/v1/devices"} 1`)
	require.Contains(t, body, `infrawatch_http_requests_total{code="401",method="GET",route="/api/v1/devices"} 1`)
	require.Contains(t, body, `infrawatch_http_requests_total{code="404",method="GET",route="/api/v1/devices/:id"} 1`)
	require.Contains(t, body, `infrawatch_http_requests_total{code="404",method="GET",route="unmatched"} 1`)
	require.Contains(t, body, `infrawatch_http_request_duration_seconds_bucket{method="GET",route="/api/v1/devices",le="0.001"}`)
	require.NotContains(t, body, "/no/such/path")
}

func TestCORS(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AllowedOrigins = []string{"https://ops.example.org"} })
	req, err := http.NewRequest("OPTIONS", e.srv.URL+"/api/v1/devices", nil)
	require.NoError(t, err)
	req.Header.Set("Origin", "https://ops.example.org")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := e.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 204, resp.StatusCode)
	require.Equal(t, "https://ops.example.org", resp.Header.Get("Access-Control-Allow-Origin"))
	require.Contains(t, resp.Header.Get("Access-Control-Allow-Headers"), "Authorization")

	req.Header.Set("Origin", "https://evil.example")
	resp, err = e.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Empty(t, resp.Header.Get("Access-Control-Allow-Origin"))
	require.Equal(t, 405, resp.StatusCode)

	require.True(t, e.api.OriginAllowed("https://ops.example.org"))
	require.False(t, e.api.OriginAllowed("https://evil.example"))
	require.False(t, e.api.OriginAllowed(""))
}

func TestOptionsValidate(t *testing.T) {
	_, err := New(Options{MaxBodyBytes: -1, AllowedOrigins: []string{"ops.example.org", "https://ok.example", "*"}})
	require.Error(t, err)
	for _, field := range []string{"Devices", "Live", "Tokens", "MaxBodyBytes", "AllowedOrigins[0]"} {
		require.Contains(t, err.Error(), field)
	}
	require.NotContains(t, err.Error(), "AllowedOrigins[1]")

	// The same registerer twice: the second server's metrics clash.
	reg := prometheus.NewRegistry()
	base := Options{Devices: newFakeDevices(), Live: &fakeLive{}, Tokens: newFakeTokens(), Registerer: reg}
	_, err = New(base)
	require.NoError(t, err)
	_, err = New(base)
	require.ErrorContains(t, err, "register http metrics")
}
