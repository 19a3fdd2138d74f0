package history

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Tier names, as they appear in answers ("source") and in the tier parameter.
const (
	TierRaw    = "raw"
	TierRollup = "rollup_1h"
	// TierMixed is the source of an answer whose older windows come from the
	// rollup and whose newest ones, not rolled up yet, from raw data.
	TierMixed = "rollup_1h+raw"
)

// Defaults of Options.
const (
	DefaultBucket          = "infrawatch"
	DefaultMaxWindows      = 10_000
	DefaultMaxPoints       = 100_000
	DefaultMaxExportPoints = 10_000_000
	DefaultRollupInterval  = 5 * time.Minute
	DefaultRollupLookback  = 3 * time.Hour
	DefaultRollupBackfill  = 48 * time.Hour
	DefaultRollupChunk     = 6 * time.Hour
	DefaultRollupBatch     = 5000
	// DefaultAlertMeasurement holds alert transitions (string fields): it is
	// not rolled up.
	DefaultAlertMeasurement = "alert_events"
)

// Querier runs Flux; *store.Store is one. The bucket is named in the query,
// so one Querier serves both tiers.
type Querier interface {
	Query(ctx context.Context, flux string) (*api.QueryTableResult, error)
}

// Writer writes line protocol to the rollup bucket; a *store.Store opened
// with Bucket = Options.RollupBucket is one.
type Writer interface {
	WriteLines(ctx context.Context, lines []byte, points int) error
}

// Options configure a Service. Store is required; the rollup tier is on
// when RollupWriter is set.
type Options struct {
	// Store runs the Flux queries of both tiers. Its request timeout bounds a
	// whole answer, CSV exports included: give history a Store with a long
	// enough Timeout (minutes) for year-long exports.
	Store Querier
	// Bucket holds the raw readings: the 2.x bucket, or "db" / "db/rp" on
	// 1.x. Default "infrawatch".
	Bucket string
	// RollupWriter writes the hourly rollup into RollupBucket. Nil turns the
	// rollup tier off: every answer then comes from raw data.
	RollupWriter Writer
	// RollupBucket holds the hourly rollup. Default: "<db>/rollup_1h", the
	// retention policy rollup_1h of Bucket's database (1.x). On 2.x name a
	// bucket created for it (e.g. "infrawatch_rollup_1h").
	RollupBucket string
	// RollupInterval is how often RunRollup rolls up the last closed hours.
	// Default 5m.
	RollupInterval time.Duration
	// RollupLookback is how far back each run recomputes, so that readings
	// arriving late (up to this long) are in the rollup. Default 3h.
	RollupLookback time.Duration
	// RollupBackfill is how far back the first run of RunRollup goes.
	// Default 48h; raise it once to fill the rollup for older data.
	RollupBackfill time.Duration
	// RollupExclude lists measurements not rolled up. Default
	// ["alert_events"] (its fields are strings).
	RollupExclude []string

	// InfluxURL and InfluxAuth ("user:password", empty without auth) reach
	// 1.x's /query endpoint to create the retention policies. Empty
	// InfluxURL: EnsureRetention does nothing (2.x: create the buckets with
	// their retention with the influx CLI).
	InfluxURL  string
	InfluxAuth string
	// RawRetention, when set, is applied to the raw retention policy (the rp
	// of Bucket, default "autogen"). Zero leaves it as it is.
	RawRetention time.Duration
	// RollupRetention is the duration of the rollup retention policy; zero
	// keeps it forever.
	RollupRetention time.Duration

	// MaxWindows caps windows per series ((stop-start)/every). Default 10,000.
	MaxWindows int
	// MaxPoints caps the points of a JSON answer. Default 100,000.
	MaxPoints int
	// MaxExportPoints caps the rows of a CSV export. Default 10,000,000.
	MaxExportPoints int

	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the rollup metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// HTTPClient is used for /query; default a client with a 30s timeout.
	HTTPClient *http.Client
}

func (o *Options) setDefaults() {
	if o.Bucket == "" {
		o.Bucket = DefaultBucket
	}
	if o.RollupBucket == "" {
		db, _, _ := strings.Cut(o.Bucket, "/")
		o.RollupBucket = db + "/" + TierRollup
	}
	if o.RollupInterval == 0 {
		o.RollupInterval = DefaultRollupInterval
	}
	if o.RollupLookback == 0 {
		o.RollupLookback = DefaultRollupLookback
	}
	if o.RollupBackfill == 0 {
		o.RollupBackfill = DefaultRollupBackfill
	}
	if o.RollupExclude == nil {
		o.RollupExclude = []string{DefaultAlertMeasurement}
	}
	if o.MaxWindows == 0 {
		o.MaxWindows = DefaultMaxWindows
	}
	if o.MaxPoints == 0 {
		o.MaxPoints = DefaultMaxPoints
	}
	if o.MaxExportPoints == 0 {
		o.MaxExportPoints = DefaultMaxExportPoints
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
}

// Validate returns every configuration error, each naming its field.
func (o *Options) Validate() error {
	var errs []error
	if o.Store == nil {
		errs = append(errs, errors.New("history: Store is required"))
	}
	for name, b := range map[string]string{"Bucket": o.Bucket, "RollupBucket": o.RollupBucket} {
		if strings.ContainsAny(b, "\"\\\n\r") {
			errs = append(errs, fmt.Errorf("history: %s %q must not contain quotes, backslashes or newlines", name, b))
		}
	}
	if o.RollupWriter != nil && o.RollupBucket == o.Bucket {
		errs = append(errs, fmt.Errorf("history: RollupBucket %q must differ from Bucket", o.RollupBucket))
	}
	for name, d := range map[string]time.Duration{"RollupInterval": o.RollupInterval, "RollupLookback": o.RollupLookback,
		"RollupBackfill": o.RollupBackfill, "RawRetention": o.RawRetention, "RollupRetention": o.RollupRetention} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("history: %s %v must not be negative", name, d))
		}
	}
	if o.RollupLookback > 0 && o.RollupLookback < time.Hour {
		errs = append(errs, fmt.Errorf("history: RollupLookback %v must be at least 1h", o.RollupLookback))
	}
	for name, n := range map[string]int{"MaxWindows": o.MaxWindows, "MaxPoints": o.MaxPoints, "MaxExportPoints": o.MaxExportPoints} {
		if n < 0 {
			errs = append(errs, fmt.Errorf("history: %s %d must not be negative", name, n))
		}
	}
	if o.InfluxURL != "" {
		if u, err := url.Parse(o.InfluxURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("history: InfluxURL %q must be an http:// or https:// URL", o.InfluxURL))
		}
	}
	return errors.Join(errs...)
}

// Service answers history questions and owns the hourly rollup tier.
// It is safe for concurrent use.
type Service struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	// horizon (Unix ns) is the end of the newest hour known to be rolled up
	// without gaps back to the start of the rollup: answers read the rollup
	// only before it. Zero: nothing rolled up by this process yet.
	horizon atomic.Int64
	schema  schemaCache
}

// New checks the options and builds a Service. It does no I/O.
func New(o Options) (*Service, error) {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("history: register metrics: %w", err)
	}
	return &Service{opts: o, log: o.Logger.With("component", "history"), metrics: m}, nil
}

// RollupEnabled reports whether the rollup tier is configured.
func (s *Service) RollupEnabled() bool { return s.opts.RollupWriter != nil }

// RolledUpTo returns the end of the newest hour the rollup tier covers
// (zero when nothing was rolled up by this process).
func (s *Service) RolledUpTo() time.Time {
	n := s.horizon.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// advanceHorizon moves the horizon forward to t (never back).
func (s *Service) advanceHorizon(t time.Time) {
	n := t.UnixNano()
	for {
		cur := s.horizon.Load()
		if cur >= n || s.horizon.CompareAndSwap(cur, n) {
			return
		}
	}
}

type metrics struct {
	rollupRuns    *prometheus.CounterVec
	rollupPoints  prometheus.Counter
	rollupLast    prometheus.Gauge
	queryDuration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		rollupRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_history_rollup_runs_total",
			Help: "Rollup runs of the hourly tier, by result (ok, error).",
		}, []string{"result"}),
		rollupPoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infrawatch_history_rollup_points_total",
			Help: "Points written to the hourly rollup tier.",
		}),
		rollupLast: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "infrawatch_history_rollup_horizon_seconds",
			Help: "End (Unix seconds) of the newest hour covered by the rollup tier.",
		}),
		queryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "infrawatch_history_query_duration_seconds",
			Help:    "Time to answer a history query, by source tier.",
			Buckets: prometheus.ExponentialBuckets(0.005, 3, 9),
		}, []string{"source"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.rollupRuns, m.rollupPoints, m.rollupLast, m.queryDuration} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
