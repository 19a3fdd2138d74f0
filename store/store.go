package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	influxhttp "github.com/influxdata/influxdb-client-go/v2/api/http"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Options.
const (
	DefaultBucket  = "infrawatch"
	DefaultTimeout = 10 * time.Second
)

// Options configure a Store.
type Options struct {
	// URL of the server, e.g. http://127.0.0.1:8086. Required.
	URL string
	// Token: an API token on 2.x; "user:password" or empty on 1.x.
	Token string
	// Org is required on 2.x and ignored on 1.x.
	Org string
	// Bucket on 2.x; on 1.x "database" or "database/retention_policy".
	// Default "infrawatch".
	Bucket string
	// Timeout bounds each request, reading the answer included. Default 10s.
	Timeout time.Duration
	// CreateDatabase makes New create the database on 1.x when missing.
	CreateDatabase bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the write metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
}

func (o *Options) setDefaults() {
	if o.Bucket == "" {
		o.Bucket = DefaultBucket
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate returns every configuration error, each naming its field. It
// checks what can be known without the server; New also requires Org when
// the server turns out to be 2.x.
func (o *Options) Validate() error {
	var errs []error
	if o.URL == "" {
		errs = append(errs, errors.New("store: URL is required"))
	} else if u, err := url.Parse(o.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("store: URL %q must be an http:// or https:// URL with a host", o.URL))
	}
	if strings.ContainsAny(o.Bucket, "\n\r\"") {
		errs = append(errs, fmt.Errorf("store: Bucket %q must not contain quotes or newlines", o.Bucket))
	}
	if db, _, _ := strings.Cut(o.Bucket, "/"); o.Bucket != "" && db == "" {
		errs = append(errs, fmt.Errorf("store: Bucket %q has an empty database name", o.Bucket))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("store: Timeout %v must be positive", o.Timeout))
	}
	return errors.Join(errs...)
}

// Store writes line protocol batches to one bucket and runs Flux queries.
// It is safe for concurrent use.
type Store struct {
	opts     Options
	log      *slog.Logger
	hc       *http.Client
	client   influxdb2.Client
	svc      influxhttp.Service
	queryAPI api.QueryAPI
	writeURL string
	version  string
	v1       bool
	metrics  *metrics
	now      func() time.Time
}

// New connects to InfluxDB: it pings the server, detects whether it is 1.x
// or 2.x, and on 1.x creates the database when Options.CreateDatabase is
// set. An unreachable server fails with an error matching ErrRetryable, so
// that the caller may wait and call New again.
func New(ctx context.Context, o Options) (*Store, error) {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("store: register metrics: %w", err)
	}
	hc := &http.Client{
		Timeout: o.Timeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: o.Timeout,
			MaxIdleConns:        32,
			MaxIdleConnsPerHost: 32,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	copts := influxdb2.DefaultOptions().SetHTTPClient(hc).SetApplicationName("infrawatch")
	client := influxdb2.NewClientWithOptions(o.URL, o.Token, copts)
	s := &Store{
		opts:     o,
		log:      o.Logger.With("component", "store"),
		hc:       hc,
		client:   client,
		svc:      client.HTTPService(),
		queryAPI: client.QueryAPI(o.Org),
		metrics:  m,
		now:      time.Now,
	}
	if err := s.connect(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) connect(ctx context.Context) error {
	header, err := s.ping(ctx)
	if err != nil {
		return err
	}
	v := strings.TrimPrefix(header, "v")
	switch {
	case strings.HasPrefix(v, "1."):
		s.v1, s.version = true, v
	case strings.HasPrefix(v, "2.") || strings.HasPrefix(v, "3."):
		s.version = v
	default:
		// A 1.8 built from source says "unknown": ask for a 2.x-only endpoint.
		s.v1, err = s.probeV1(ctx)
		if err != nil {
			return err
		}
		s.version = "2.x"
		if s.v1 {
			s.version = "1.x"
		}
	}
	if !s.v1 && s.opts.Org == "" {
		return fmt.Errorf("store: Org is required: %s is InfluxDB %s", s.opts.URL, s.version)
	}
	q := url.Values{}
	if s.opts.Org != "" {
		q.Set("org", s.opts.Org)
	}
	q.Set("bucket", s.opts.Bucket)
	q.Set("precision", "ns")
	s.writeURL = s.svc.ServerAPIURL() + "write?" + q.Encode()

	created := false
	if s.v1 && s.opts.CreateDatabase {
		if created, err = s.createDatabase(ctx); err != nil {
			return err
		}
	}
	s.log.Info("connected to influxdb", "url", s.opts.URL, "version", s.version,
		"bucket", s.opts.Bucket, "database_created", created)
	return nil
}

// ping GETs /ping and returns the X-Influxdb-Version header.
func (s *Store) ping(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.svc.ServerURL()+"ping", nil)
	if err != nil {
		return "", fmt.Errorf("ping influxdb at %s: %w", s.opts.URL, err)
	}
	resp, err := s.svc.DoHTTPRequestWithResponse(req, nil)
	if err != nil {
		return "", &QueryError{Retryable: true, Err: fmt.Errorf("ping influxdb at %s: %w", s.opts.URL, err)}
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return "", &QueryError{Status: resp.StatusCode, Retryable: resp.StatusCode >= 500,
			Message: resp.Status, Err: fmt.Errorf("ping influxdb at %s: status %s", s.opts.URL, resp.Status)}
	}
	return resp.Header.Get("X-Influxdb-Version"), nil
}

// probeV1 tells 1.x from 2.x when /ping does not say: 2.x serves
// /api/v2/setup without a token, 1.8 has no such route.
func (s *Store) probeV1(ctx context.Context) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.svc.ServerAPIURL()+"setup", nil)
	if err != nil {
		return false, fmt.Errorf("detect influxdb version: %w", err)
	}
	resp, err := s.svc.DoHTTPRequestWithResponse(req, nil)
	if err != nil {
		return false, &QueryError{Retryable: true, Err: fmt.Errorf("detect influxdb version at %s: %w", s.opts.URL, err)}
	}
	drain(resp)
	return resp.StatusCode == http.StatusNotFound, nil
}

// createDatabase runs CREATE DATABASE on 1.x (idempotent there). Without
// the admin right (403, or an InfluxQL authorization error) it logs and
// goes on: the database may exist, and a write will say if it does not.
func (s *Store) createDatabase(ctx context.Context) (bool, error) {
	db, _, _ := strings.Cut(s.opts.Bucket, "/")
	stmt := `CREATE DATABASE "` + strings.ReplaceAll(db, `\`, `\\`) + `"`
	body := url.Values{"q": {stmt}}.Encode()
	var result struct {
		Error   string `json:"error"`
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
	}
	perr := s.svc.DoPostRequest(ctx, s.svc.ServerURL()+"query", strings.NewReader(body),
		func(req *http.Request) {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		},
		func(resp *http.Response) error {
			defer drain(resp)
			return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&result)
		})
	if perr != nil {
		f := classify(perr, s.now())
		if f.kind == kindUnauthorized {
			s.log.Warn("cannot create influxdb database, assuming it exists", "database", db, "error", f.message)
			return false, nil
		}
		return false, &QueryError{Status: f.status, Retryable: f.retryable, Message: f.message,
			Err: fmt.Errorf("create database %q: %w", db, perr)}
	}
	msg := result.Error
	for _, r := range result.Results {
		if r.Error != "" {
			msg = r.Error
		}
	}
	if msg != "" {
		if strings.Contains(msg, "authoriz") || strings.Contains(msg, "privilege") {
			s.log.Warn("cannot create influxdb database, assuming it exists", "database", db, "error", msg)
			return false, nil
		}
		return false, fmt.Errorf("create database %q: %s", db, msg)
	}
	return true, nil
}

// WriteLines sends one batch of newline-separated line protocol (precision
// ns) in one attempt, as-is: lines is streamed as the request body, and is
// no longer read once WriteLines returns, so the caller may reuse it. points
// is the number of points in lines, for metrics and errors. On failure the
// error is a *WriteError; errors.Is(err, ErrRetryable) tells whether sending
// the same batch later may succeed. WriteLines never retries.
func (s *Store) WriteLines(ctx context.Context, lines []byte, points int) error {
	if len(lines) == 0 {
		return nil
	}
	start := s.now()
	body := newWaitBody(lines)
	sent := false
	perr := s.svc.DoPostRequest(ctx, s.writeURL, body, func(req *http.Request) {
		sent = true
		// The body is not a *bytes.Reader (it must report its Close), so
		// give the length ourselves: no chunked encoding.
		req.ContentLength = int64(len(lines))
		req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	}, nil)
	if sent {
		// net/http may still read the body after Do returned (an early
		// answer, a cancelled request); the caller's buffer must be free.
		body.wait(s.opts.Timeout)
	}
	s.metrics.writeDuration.Observe(s.now().Sub(start).Seconds())
	if perr == nil {
		s.metrics.points.Add(float64(points))
		s.metrics.bytes.Add(float64(len(lines)))
		return nil
	}
	f := classify(perr, s.now())
	s.metrics.errors.WithLabelValues(f.kind).Inc()
	return &WriteError{
		Bucket:     s.opts.Bucket,
		Points:     points,
		Status:     f.status,
		Retryable:  f.retryable,
		RetryAfter: f.retryAfter,
		Partial:    f.status == http.StatusBadRequest && strings.Contains(f.message, "partial write"),
		Kind:       f.kind,
		Message:    f.message,
		Err:        f.err,
	}
}

// Query runs a Flux query. The caller iterates the result with Next and
// Record, checks Err, and must Close it. The result streams: Options.Timeout
// bounds the whole request including the reading of the answer. On 1.x the
// bucket in the query is "database/retention_policy" or "database".
// Errors before the result streams are *QueryError.
func (s *Store) Query(ctx context.Context, flux string) (*api.QueryTableResult, error) {
	res, err := s.queryAPI.Query(ctx, flux)
	if err != nil {
		var perr *influxhttp.Error
		if errors.As(err, &perr) {
			f := classify(perr, s.now())
			if f.status == http.StatusInternalServerError {
				// 1.8 answers a Flux compile error (and most query faults)
				// with a 500: the same query would fail the same way.
				f.retryable = false
			}
			return nil, &QueryError{Status: f.status, Retryable: f.retryable, Message: f.message, Err: f.err}
		}
		return nil, &QueryError{Err: err}
	}
	return res, nil
}

// Ping checks that the server answers /ping, for readiness checks.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.ping(ctx)
	return err
}

// Bucket returns the bucket (2.x) or "database[/rp]" (1.x) written to.
func (s *Store) Bucket() string { return s.opts.Bucket }

// Version returns the server's version, e.g. "1.8.3", or "1.x"/"2.x"
// when the server did not tell.
func (s *Store) Version() string { return s.version }

// IsV1 reports whether the server is InfluxDB 1.x.
func (s *Store) IsV1() bool { return s.v1 }

// Close releases idle connections. Requests in flight finish on their own.
func (s *Store) Close() {
	s.client.Close()
	s.hc.CloseIdleConnections()
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

// waitBody is a request body over the caller's buffer that reports when
// net/http has closed it, i.e. stopped reading it.
type waitBody struct {
	mu       sync.Mutex
	r        *bytes.Reader
	detached bool
	once     sync.Once
	closed   chan struct{}
}

func newWaitBody(b []byte) *waitBody {
	return &waitBody{r: bytes.NewReader(b), closed: make(chan struct{})}
}

var errBodyDetached = errors.New("request body detached after the write returned")

func (b *waitBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.detached {
		return 0, errBodyDetached
	}
	return b.r.Read(p)
}

func (b *waitBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// wait blocks until net/http closes the body, then detaches the caller's
// buffer so that no later Read can touch it. net/http always closes the
// body; the bound only guards against a transport that would not.
func (b *waitBody) wait(bound time.Duration) {
	t := time.NewTimer(bound)
	select {
	case <-b.closed:
	case <-t.C:
	}
	t.Stop()
	b.mu.Lock()
	b.detached = true
	b.mu.Unlock()
}
