package dashboardapi

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// FuzzRequestBodies sends arbitrary bodies to the JSON endpoints: the answer
// is never a 500, and an error is always the API's error shape.
func FuzzRequestBodies(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","name":"a"}`, `{"id":"a","name":"a","location":{"lat":1,"lon":2}}`,
		`{"metrics":{"x":{"min":1e400}}}`, `{"name":"n","role":"viewer"}`, `[]`, `null`, ``, `{"id":`,
		`{"id":"a","name":"a"}{}`, `{"tags":{"a":1}}`, "\xff\xfe",
	} {
		f.Add(s)
	}
	api, err := New(Options{Devices: newFakeDevices(), Live: &fakeLive{states: map[string]DeviceState{}},
		Tokens: newFakeTokens(), Registerer: prometheus.NewRegistry(), MaxBodyBytes: 4096,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	h := api.Handler()
	f.Fuzz(func(t *testing.T, body string) {
		for _, target := range []struct{ method, path string }{
			{"POST", "/api/v1/devices"}, {"PUT", "/api/v1/devices/a"}, {"POST", "/api/v1/tokens"},
		} {
			req := httptest.NewRequest(target.method, target.path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+adminTok)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s %s %q: status %d: %s", target.method, target.path, body, rec.Code, rec.Body)
			}
			if rec.Code >= 400 {
				var e errorBody
				dec := json.NewDecoder(rec.Body)
				dec.DisallowUnknownFields()
				if err := dec.Decode(&e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
					t.Fatalf("%s %q: status %d: bad error body: %v", target.path, body, rec.Code, err)
				}
			} else if rec.Code != http.StatusOK && rec.Code != http.StatusCreated {
				t.Fatalf("%s %q: unexpected status %d", target.path, body, rec.Code)
			}
		}
	})
}
