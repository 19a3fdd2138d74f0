package store

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{" 2 ", 2 * time.Second},
		{"0", 0},
		{"-3", 0},
		{"junk", 0},
		{"999999999999", maxRetryAfter},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{now.Add(time.Hour).Format(http.TimeFormat), maxRetryAfter},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, parseRetryAfter(tc.in, now), "Retry-After %q", tc.in)
	}
}

func TestBackoff(t *testing.T) {
	for attempt := -1; attempt < 80; attempt++ {
		want := backoffMax
		if a := max(attempt, 0); a < 16 {
			want = min(backoffBase<<a, backoffMax)
		}
		for range 20 {
			d := Backoff(attempt)
			require.GreaterOrEqual(t, d, want/2, "attempt %d", attempt)
			require.LessOrEqual(t, d, want, "attempt %d", attempt)
		}
	}
	// Jitter: not every delay the same.
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[Backoff(3)] = true
	}
	assert.Greater(t, len(seen), 1)
}

func TestRetryDelay(t *testing.T) {
	err := &WriteError{Retryable: true, RetryAfter: time.Minute}
	assert.Equal(t, time.Minute, RetryDelay(err, 0))
	assert.LessOrEqual(t, RetryDelay(errors.New("x"), 0), backoffBase)
}

// fakeInflux is a real HTTP server that answers like InfluxDB 2.x, with
// the write status the test sets.
type fakeInflux struct {
	status     atomic.Int64
	retryAfter atomic.Value // string
	writes     atomic.Int64
	lastQuery  atomic.Value // string
}

func (f *fakeInflux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/ping":
		w.Header().Set("X-Influxdb-Version", "v2.7.10")
		w.WriteHeader(http.StatusNoContent)
	case "/api/v2/write":
		f.writes.Add(1)
		f.lastQuery.Store(r.URL.RawQuery)
		_, _ = io.Copy(io.Discard, r.Body)
		if ra, _ := f.retryAfter.Load().(string); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		status := int(f.status.Load())
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"code":"some code","message":"some message"}`)
	default:
		http.NotFound(w, r)
	}
}

func TestWriteErrorClassification(t *testing.T) {
	fake := &fakeInflux{}
	fake.retryAfter.Store("")
	srv := httptest.NewServer(fake)
	defer srv.Close()

	reg := prometheus.NewRegistry()
	s, err := New(context.Background(), Options{URL: srv.URL, Token: "tok", Org: "city", Bucket: "telemetry",
		Logger: quietLogger(), Registerer: reg})
	require.NoError(t, err)
	defer s.Close()
	assert.False(t, s.IsV1())
	assert.Equal(t, "2.7.10", s.Version())

	tests := []struct {
		status     int
		retryAfter string
		retryable  bool
		sentinel   error
		kind       string
		wantAfter  time.Duration
	}{
		{400, "", false, ErrBadRequest, kindBadRequest, 0},
		{401, "", false, ErrUnauthorized, kindUnauthorized, 0},
		{403, "", false, ErrUnauthorized, kindUnauthorized, 0},
		{404, "", false, ErrNotFound, kindNotFound, 0},
		{413, "", false, ErrTooLarge, kindTooLarge, 0},
		{422, "", false, nil, kindOther, 0},
		{429, "3", true, nil, kindThrottled, 3 * time.Second},
		{500, "", true, nil, kindServer, 0},
		{503, "1", true, nil, kindServer, time.Second},
	}
	kinds := map[string]int{}
	for _, tc := range tests {
		fake.status.Store(int64(tc.status))
		fake.retryAfter.Store(tc.retryAfter)
		err := s.WriteLines(context.Background(), []byte("m v=1\n"), 1)
		var we *WriteError
		require.ErrorAs(t, err, &we, "status %d", tc.status)
		assert.Equal(t, tc.status, we.Status)
		assert.Equal(t, tc.retryable, we.Retryable, "status %d", tc.status)
		assert.Equal(t, tc.retryable, errors.Is(err, ErrRetryable), "status %d", tc.status)
		if tc.sentinel != nil {
			assert.ErrorIs(t, err, tc.sentinel)
		}
		assert.Equal(t, tc.kind, we.Kind)
		assert.Equal(t, tc.wantAfter, we.RetryAfter, "status %d", tc.status)
		assert.Equal(t, "some message", we.Message)
		assert.Contains(t, err.Error(), "telemetry")
		kinds[tc.kind]++
		assert.Equal(t, float64(kinds[tc.kind]), counterValue(t, s.metrics.errors.WithLabelValues(tc.kind)), "kind %s", tc.kind)
	}
	assert.Equal(t, "bucket=telemetry&org=city&precision=ns", fake.lastQuery.Load())

	fake.status.Store(http.StatusNoContent)
	require.NoError(t, s.WriteLines(context.Background(), []byte("m v=1\nm v=2\n"), 2))
	assert.Equal(t, 2.0, counterValue(t, s.metrics.points))
	assert.Equal(t, len(tests)+1, int(fake.writes.Load()), "one attempt per call, no internal retry")

	// An empty batch sends nothing.
	require.NoError(t, s.WriteLines(context.Background(), nil, 0))
	assert.Equal(t, len(tests)+1, int(fake.writes.Load()))

	// A second store on the same registry shares the collectors.
	s2, err := New(context.Background(), Options{URL: srv.URL, Org: "city", Logger: quietLogger(), Registerer: reg})
	require.NoError(t, err)
	s2.Close()
}

func TestNewNeedsOrgOn2x(t *testing.T) {
	srv := httptest.NewServer(&fakeInflux{})
	defer srv.Close()
	_, err := New(context.Background(), Options{URL: srv.URL, Logger: quietLogger()})
	require.ErrorContains(t, err, "Org is required")
}

func TestNewVersionProbe(t *testing.T) {
	// A server that does not tell its version is 2.x when /api/v2/setup exists.
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/api/v2/setup", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, `{"allowed":false}`) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	s, err := New(context.Background(), Options{URL: srv.URL, Org: "o", Logger: quietLogger()})
	require.NoError(t, err)
	defer s.Close()
	assert.False(t, s.IsV1())
	assert.Equal(t, "2.x", s.Version())
}

func TestOptionsValidate(t *testing.T) {
	o := Options{URL: "ftp://x", Bucket: "a\"b", Timeout: -1}
	err := o.Validate()
	require.Error(t, err)
	for _, field := range []string{"URL", "Bucket", "Timeout"} {
		assert.Contains(t, err.Error(), field)
	}
	o = Options{}
	assert.ErrorContains(t, o.Validate(), "URL is required")
	o = Options{URL: "http://127.0.0.1:8086", Bucket: "/rp"}
	assert.ErrorContains(t, o.Validate(), "empty database")

	o = Options{URL: "http://127.0.0.1:8086"}
	o.setDefaults()
	assert.Equal(t, DefaultBucket, o.Bucket)
	assert.Equal(t, DefaultTimeout, o.Timeout)
	require.NoError(t, o.Validate())
}
