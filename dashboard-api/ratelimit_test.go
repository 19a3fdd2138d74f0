package dashboardapi

import (
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/auth"
)

// TestAuthFailureRateLimit: an address that presents wrong tokens gets 429
// with Retry-After after the burst, on every authenticated route and the
// stream, also with a right token; public routes, requests without any
// credential and successful requests are not limited.
func TestAuthFailureRateLimit(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.AuthFailures = auth.NewFailureLimiter(auth.FailureLimiterOptions{PerMinute: 10, Burst: 20})
	})
	// Successes never count.
	for i := 0; i < 200; i++ {
		require.Equal(t, http.StatusOK, e.do("GET", "/api/v1/devices", viewerTok, nil).status)
	}
	// No credential at all is not a guess.
	for i := 0; i < 50; i++ {
		require.Equal(t, http.StatusUnauthorized, e.do("GET", "/api/v1/devices", "", nil).status)
	}
	for i := 0; i < 20; i++ {
		require.Equal(t, http.StatusUnauthorized, e.do("GET", "/api/v1/devices", "guess-"+strconv.Itoa(i), nil).status, "failure %d", i)
	}
	for _, tc := range []struct{ path, token string }{
		{"/api/v1/devices", "guess-x"},
		{"/api/v1/devices", viewerTok}, // a right guess is not told apart
		{"/api/v1/state", adminTok},
		{"/api/v1/stream?token=" + viewerTok, ""},
	} {
		r := e.do("GET", tc.path, tc.token, nil)
		require.Equal(t, http.StatusTooManyRequests, r.status, tc.path)
		code, _, _ := r.errorOf(t)
		require.Equal(t, CodeRateLimited, code)
		secs, err := strconv.Atoi(r.header.Get("Retry-After"))
		require.NoError(t, err)
		require.True(t, secs >= 1 && secs <= 6, "Retry-After %d", secs)
	}
	// Public routes stay open.
	require.Equal(t, http.StatusOK, e.do("GET", "/healthz", "", nil).status)
	require.Equal(t, http.StatusOK, e.do("GET", "/api/v1/openapi.json", "", nil).status)
	require.Contains(t, string(e.do("GET", "/metrics", "", nil).body), "infrawatch_http_auth_rate_limited_total 4")
}
