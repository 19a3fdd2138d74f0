package dashboardapi

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
)

// CodeRateLimited is the error code of a 429.
const CodeRateLimited = "rate_limited"

// AuthFailureLimiter limits failed authentications per client key (the
// client IP); auth.FailureLimiter implements it.
type AuthFailureLimiter interface {
	// Allow reports whether key may try to authenticate at now; when not,
	// how long until it may.
	Allow(key string, now time.Time) (bool, time.Duration)
	// Fail records a failed authentication.
	Fail(key string, now time.Time)
}

// limitAuthFailures answers 429 with Retry-After to a client IP that failed
// authentication too often, on every route that authenticates (the /api/v1
// routes and the stream, not the public ones), before its credentials are
// checked: answering a right guess differently would defeat the limit. A
// request that presented a credential (Authorization header or ?token=) and
// was answered 401 counts as a failure; one without any credential is not a
// guess and costs nothing, nor do successful requests. The IP is the peer
// address (no proxy is trusted).
func limitAuthFailures(l AuthFailureLimiter, limited prometheus.Counter, now func() time.Time) gin.HandlerFunc {
	return func(c *gin.Context) {
		path := c.Request.URL.Path
		if !strings.HasPrefix(path, "/api/v1/") || path == "/api/v1/openapi.json" {
			c.Next()
			return
		}
		ip := c.ClientIP()
		presented := c.GetHeader("Authorization") != "" || c.Query("token") != ""
		if ok, wait := l.Allow(ip, now()); !ok {
			limited.Inc()
			c.Header("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			abort(c, &Error{Status: http.StatusTooManyRequests, Code: CodeRateLimited,
				Message: "too many failed authentications from this address; retry later"})
			return
		}
		c.Next()
		if presented && unauthorized(c) {
			l.Fail(ip, now())
		}
	}
}

// unauthorized reports whether the request was answered (or is about to
// be, by errorHandler) with 401.
func unauthorized(c *gin.Context) bool {
	for _, e := range c.Errors {
		var ae *Error
		if errors.As(e.Err, &ae) && ae.Status == http.StatusUnauthorized {
			return true
		}
	}
	return c.Writer.Written() && c.Writer.Status() == http.StatusUnauthorized
}

func newRateLimitMetric(reg prometheus.Registerer) (prometheus.Counter, error) {
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "infrawatch_http_auth_rate_limited_total",
		Help: "API requests refused with 429 because their client IP failed authentication too often.",
	})
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	return c, nil
}
