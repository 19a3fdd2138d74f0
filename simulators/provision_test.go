package simulators

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeAPI implements POST /api/v1/devices and PUT /api/v1/devices/{id} as
// the registry does: create answers 201 with the secret once, a second
// create 409, an update takes a new secret.
type fakeAPI struct {
	mu       sync.Mutex
	token    string
	devices  map[string]deviceBody
	secrets  map[string]string
	inFlight atomic.Int32
	maxIn    atomic.Int32
	fail503  atomic.Int32 // answer this many requests with 503 first
}

func newFakeAPI(token string) *fakeAPI {
	return &fakeAPI{token: token, devices: map[string]deviceBody{}, secrets: map[string]string{}}
}

func (a *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.inFlight.Add(1)
	defer a.inFlight.Add(-1)
	for {
		m := a.maxIn.Load()
		if n <= m || a.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(2 * time.Millisecond) // let requests overlap
	apiErr := func(status int, code, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	}
	if a.fail503.Add(-1) >= 0 {
		apiErr(http.StatusServiceUnavailable, "unavailable", "starting")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+a.token {
		apiErr(http.StatusUnauthorized, "unauthorized", "bad token")
		return
	}
	var body deviceBody
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		apiErr(http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if body.ID == "" || body.Type == "" || body.Domain == "" || body.Site == "" || body.ExpectedInterval < 1 ||
		len(body.Metrics) == 0 || body.Lifecycle != "active" || body.Location == nil || body.Location.Lat == 0 {
		apiErr(http.StatusBadRequest, "invalid", "incomplete device")
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/devices":
		if _, ok := a.devices[body.ID]; ok {
			apiErr(http.StatusConflict, "conflict", "device exists")
			return
		}
		secret := body.Secret
		if secret == "" {
			secret = "s" + body.ID
		}
		a.devices[body.ID], a.secrets[body.ID] = body, secret
		w.WriteHeader(http.StatusCreated)
		body.Secret = secret
		_ = json.NewEncoder(w).Encode(body)
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/api/v1/devices/"):
		id := strings.TrimPrefix(r.URL.Path, "/api/v1/devices/")
		if _, ok := a.devices[id]; !ok || id != body.ID {
			apiErr(http.StatusNotFound, "not_found", "no such device")
			return
		}
		if body.Secret != "" {
			a.secrets[id] = body.Secret
		}
		a.devices[id] = body
		body.Secret = ""
		_ = json.NewEncoder(w).Encode(body)
	default:
		apiErr(http.StatusMethodNotAllowed, "method", r.Method)
	}
}

func TestProvision(t *testing.T) {
	api := newFakeAPI("admin-token")
	srv := httptest.NewServer(api)
	defer srv.Close()
	devs, err := defaultFleet(t).Build(BuildOptions{Devices: 60})
	require.NoError(t, err)
	ctx := context.Background()

	api.fail503.Store(3) // the API is still starting: retried
	secrets, err := Provision(ctx, srv.URL, "admin-token", devs)
	require.NoError(t, err, "provision")
	require.Truef(t, len(secrets) == len(devs), "%d secrets for %d devices", len(secrets), len(devs))
	for _, d := range devs {
		require.Truef(t, secrets[d.ID] == "s"+d.ID, "%s: secret %q", d.ID, secrets[d.ID])
		got := api.devices[d.ID]
		require.Truef(t, got.GatewayID == d.GatewayID && got.Site == d.Site && got.Type == d.Type, "%s registered as %+v", d.ID, got)
		require.Truef(t, reflect2(got.Metrics, d.Metrics), "%s metrics %v", d.ID, got.Metrics)
	}
	peak := api.maxIn.Load()
	assert.Truef(t, peak <= ProvisionConcurrency && peak > 1, "max requests in flight %d", peak)

	// A second run finds every device registered: it rotates their secrets.
	again, err := Provision(ctx, srv.URL, "admin-token", devs)
	require.NoError(t, err, "provision again")
	for _, d := range devs {
		require.Truef(t, again[d.ID] != secrets[d.ID] && len(again[d.ID]) == 32, "%s: secret not rotated: %q", d.ID, again[d.ID])
		require.Truef(t, api.secrets[d.ID] == again[d.ID], "%s: the API holds %q, we %q", d.ID, api.secrets[d.ID], again[d.ID])
	}
}

func reflect2(a, b map[string]MetricSpec) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestProvisionErrors(t *testing.T) {
	api := newFakeAPI("admin-token")
	srv := httptest.NewServer(api)
	defer srv.Close()
	devs, err := defaultFleet(t).Build(BuildOptions{Devices: 20})
	require.NoError(t, err)

	_, err = Provision(context.Background(), srv.URL, "wrong", devs)
	var apiErr *APIError
	require.Truef(t, errors.As(err, &apiErr) && apiErr.Status == 401 && apiErr.Code == "unauthorized", "err = %v", err)
	require.Truef(t, strings.Contains(err.Error(), "provision device"), "err = %v", err)

	_, err = Provision(context.Background(), "ftp://x", "t", devs)
	require.Truef(t, err != nil, "bad url accepted")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Provision(ctx, srv.URL, "admin-token", devs)
	require.Truef(t, errors.Is(err, context.Canceled), "err = %v", err)

	// Nothing listens: transient errors are retried, then reported.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = Provision(ctx, dead.URL, "t", devs[:1])
	require.Truef(t, err != nil, "no error from a dead API")
}

func TestProvisionDevice(t *testing.T) {
	api := newFakeAPI("admin-token")
	srv := httptest.NewServer(api)
	defer srv.Close()
	devs, err := defaultFleet(t).Build(BuildOptions{Devices: 2})
	require.NoError(t, err)
	secret, err := ProvisionDevice(context.Background(), srv.URL+"/", "admin-token", &devs[0])
	require.NoError(t, err, "provision one device")
	require.Truef(t, secret == "s"+devs[0].ID, "secret %q", secret)
	_, err = ProvisionDevice(context.Background(), "ftp://x", "t", &devs[0])
	require.Truef(t, err != nil, "bad url accepted")

	// A device with no place is registered without a location, not at 0,0.
	b, err := json.Marshal(bodyFor(&DeviceSpec{ID: "d", ExpectedInterval: 500 * time.Millisecond}))
	require.NoError(t, err)
	require.Truef(t, !strings.Contains(string(b), `"location"`), "body %s", b)
	require.Truef(t, strings.Contains(string(b), `"expected_interval":1`), "body %s", b)
}
