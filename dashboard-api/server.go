package dashboardapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/infrawatch/infrawatch/auth"
	"github.com/infrawatch/infrawatch/dashboard-api/stream"
)

// Defaults filled in by New.
const (
	DefaultMaxBodyBytes = 1 << 20 // 1 MiB: far above any device or token document
	DefaultReadyTimeout = 2 * time.Second
)

// Options configures the API server. Devices, Live and Tokens are required.
type Options struct {
	// Devices is the device registry.
	Devices DeviceService
	// Live gives the live status and latest values of devices.
	Live LiveState
	// Tokens verifies bearer tokens and manages them.
	Tokens TokenService
	// DeadLetters lists and replays ingest's dead letters; nil answers 503.
	DeadLetters DeadLetterService
	// AlertCount returns the number of active alerts of a device; nil means
	// none (until the alert engine is wired).
	AlertCount func(deviceID string) int
	// Alerts is the alert engine behind /alerts, /rules and /silences;
	// nil answers those routes with 503.
	Alerts AlertService
	// Backtest runs POST /rules/backtest; nil answers it with 503.
	Backtest BacktestFunc
	// History answers /history, /history/p95 and /history/availability;
	// nil leaves those routes out.
	History HistoryService
	// Ready checks the dependencies (broker, InfluxDB); its error should name
	// the check that failed. Nil means always ready.
	Ready func(ctx context.Context) error
	// ReadyTimeout bounds one readiness check; default DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Gatherer is served at /metrics. Default: the registry created for
	// Registerer when that is nil too, else an empty registry.
	Gatherer prometheus.Gatherer
	// Registerer receives the HTTP metrics. Default: a private registry
	// (never the global default one).
	Registerer prometheus.Registerer
	// MaxBodyBytes caps request bodies; default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// AllowedOrigins are the browser origins (scheme://host[:port]) allowed
	// by CORS and, later, the websocket upgrade. "*" allows any origin.
	AllowedOrigins []string
	// Logger receives access logs (debug; 5xx at error) and failures.
	// Default: slog.Default().
	Logger *slog.Logger
	// Stream is the live event hub behind GET /api/v1/stream; nil leaves
	// the route out.
	Stream *stream.Hub
	// AuthFailures limits failed authentications per client IP (see
	// ratelimit.go). Default: auth.NewFailureLimiter with its defaults
	// (10 failures a minute, burst 20, 10000 addresses tracked).
	AuthFailures AuthFailureLimiter
}

// Validate reports every configuration error, naming the field.
func (o *Options) Validate() error {
	var errs []error
	if o.Devices == nil {
		errs = append(errs, errors.New("Devices: required"))
	}
	if o.Live == nil {
		errs = append(errs, errors.New("Live: required"))
	}
	if o.Tokens == nil {
		errs = append(errs, errors.New("Tokens: required"))
	}
	if o.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxBodyBytes: must not be negative, got %d", o.MaxBodyBytes))
	}
	if o.ReadyTimeout < 0 {
		errs = append(errs, fmt.Errorf("ReadyTimeout: must not be negative, got %s", o.ReadyTimeout))
	}
	for i, origin := range o.AllowedOrigins {
		if origin == "*" {
			continue
		}
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			errs = append(errs, fmt.Errorf("AllowedOrigins[%d]: %q is not an origin like https://ops.example.org", i, origin))
		}
	}
	return errors.Join(errs...)
}

func (o *Options) setDefaults() {
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = DefaultReadyTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registerer == nil {
		reg := prometheus.NewRegistry()
		o.Registerer = reg
		if o.Gatherer == nil {
			o.Gatherer = reg
		}
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
	if o.AuthFailures == nil {
		o.AuthFailures = auth.NewFailureLimiter(auth.FailureLimiterOptions{})
	}
}

// Server is the HTTP API. It holds no goroutines; the caller serves
// Handler() with its own http.Server.
type Server struct {
	opts    Options
	engine  *gin.Engine
	api     *gin.RouterGroup
	origins map[string]bool
	anyOrig bool
}

// New builds the router with every route of the API.
func New(o Options) (*Server, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("dashboard api options: %w", err)
	}
	o.setDefaults()
	m, err := newHTTPMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	rateLimited, err := newRateLimitMetric(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register http metrics: %w", err)
	}

	// Release mode silences gin's debug route dump and warnings. The mode is
	// process-global in gin; the API never wants debug mode.
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.HandleMethodNotAllowed = true
	// An API answers exactly at its paths; a redirect would drop a POST body
	// with some clients and hide client bugs.
	e.RedirectTrailingSlash = false
	e.RedirectFixedPath = false
	e.ContextWithFallback = true
	// No proxy is trusted: ClientIP is the peer address, not a header.
	if err := e.SetTrustedProxies(nil); err != nil {
		return nil, fmt.Errorf("configure trusted proxies: %w", err)
	}

	s := &Server{opts: o, engine: e, origins: map[string]bool{}}
	for _, origin := range o.AllowedOrigins {
		if origin == "*" {
			s.anyOrig = true
		}
		s.origins[strings.TrimSuffix(origin, "/")] = true
	}

	e.Use(observe(o.Logger, m), cors(s.OriginAllowed), errorHandler(o.Logger), recovery(o.Logger), limitBody(o.MaxBodyBytes),
		limitAuthFailures(o.AuthFailures, rateLimited, time.Now))
	e.NoRoute(notFound)
	e.NoMethod(methodNotAllowed)

	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", gin.WrapH(promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{})))
	// The API description is public so tools can read it before holding a token.
	e.GET("/api/v1/openapi.json", serveOpenAPI)
	// The operations page (web.go) is public too: it asks for a token.
	registerWeb(e)

	s.api = e.Group("/api/v1", authenticate(o.Tokens))
	viewer := RequireRole(RoleViewer)
	admin := RequireRole(RoleAdmin)

	s.api.GET("/devices", viewer, s.listDevices)
	s.api.POST("/devices", admin, s.createDevice)
	s.api.GET("/devices/:id", viewer, s.getDevice)
	s.api.PUT("/devices/:id", admin, s.updateDevice)
	s.api.DELETE("/devices/:id", admin, s.deleteDevice)
	s.api.GET("/devices/:id/latest", viewer, s.latest)
	s.api.GET("/state", viewer, s.state)

	s.api.GET("/tokens", admin, s.listTokens)
	s.api.POST("/tokens", admin, s.createToken)
	s.api.DELETE("/tokens/:id", admin, s.deleteToken)
	s.registerDeadLetters(admin)
	s.alertRoutes(viewer, RequireRole(RoleOperator), admin)
	s.registerStream()
	if o.History != nil {
		s.registerHistory(viewer)
	}
	return s, nil
}

// Handler returns the http.Handler to serve.
func (s *Server) Handler() http.Handler { return s.engine }

// Engine returns the Gin engine so other routes (alerts, stream, history,
// the dashboard page) can be registered; they inherit the error handling,
// limits, logs and metrics. Add them to the OpenAPI document too.
func (s *Server) Engine() *gin.Engine { return s.engine }

// API returns the authenticated /api/v1 group: every route in it requires a
// valid bearer token; add RequireRole for more than viewer.
func (s *Server) API() *gin.RouterGroup { return s.api }

// OriginAllowed reports whether a browser origin is in AllowedOrigins; the
// websocket upgrade uses the same list.
func (s *Server) OriginAllowed(origin string) bool {
	if origin == "" {
		return false
	}
	return s.anyOrig || s.origins[strings.TrimSuffix(origin, "/")]
}

type statusBody struct {
	Status string `json:"status"`
}

func (s *Server) healthz(c *gin.Context) {
	c.JSON(http.StatusOK, statusBody{Status: "ok"})
}

func (s *Server) readyz(c *gin.Context) {
	if s.opts.Ready != nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), s.opts.ReadyTimeout)
		defer cancel()
		if err := s.opts.Ready(ctx); err != nil {
			// The check's error names what is down; readiness is for
			// operators and orchestrators, so the detail is the point.
			abort(c, &Error{Status: http.StatusServiceUnavailable, Code: CodeNotReady, Message: err.Error()})
			return
		}
	}
	c.JSON(http.StatusOK, statusBody{Status: "ready"})
}
