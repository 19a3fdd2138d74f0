package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	influxhttp "github.com/influxdata/influxdb-client-go/v2/api/http"
)

// Sentinels matched with errors.Is against *WriteError and *QueryError.
var (
	// ErrRetryable: the request may succeed later unchanged (network error,
	// timeout, cancellation, 5xx, 429, 408). The data was not refused.
	ErrRetryable = errors.New("influxdb: retryable")
	// ErrBadRequest: 400, bad line protocol or a partial write (the valid
	// points were stored); sending it again will not help.
	ErrBadRequest = errors.New("influxdb: bad request")
	// ErrUnauthorized: 401 or 403, the token lacks the right.
	ErrUnauthorized = errors.New("influxdb: unauthorized")
	// ErrNotFound: 404, the database or bucket does not exist (New creates
	// the database on 1.x when Options.CreateDatabase is set).
	ErrNotFound = errors.New("influxdb: database or bucket not found")
	// ErrTooLarge: 413, the batch is over the server's limit; split it.
	ErrTooLarge = errors.New("influxdb: request too large")
)

// Error kinds, the label values of infrawatch_influx_write_errors_total.
const (
	kindNetwork      = "network"
	kindTimeout      = "timeout"
	kindCanceled     = "canceled"
	kindServer       = "server"       // 5xx
	kindThrottled    = "throttled"    // 429
	kindBadRequest   = "bad_request"  // 400
	kindUnauthorized = "unauthorized" // 401, 403
	kindNotFound     = "not_found"    // 404
	kindTooLarge     = "too_large"    // 413
	kindOther        = "other"
)

var errorKinds = []string{kindNetwork, kindTimeout, kindCanceled, kindServer, kindThrottled,
	kindBadRequest, kindUnauthorized, kindNotFound, kindTooLarge, kindOther}

// WriteError is why one WriteLines attempt failed.
type WriteError struct {
	Bucket string
	Points int
	// Status is the HTTP status, 0 when no answer came (network error,
	// timeout, cancellation).
	Status int
	// Retryable is true when the same batch may succeed later.
	Retryable bool
	// RetryAfter is the server's Retry-After (429, 503), 0 when not given.
	RetryAfter time.Duration
	// Partial is true for a 400 "partial write" from InfluxDB 1.x: the
	// valid points were stored and the invalid ones dropped.
	Partial bool
	// Kind is a short class of the failure (network, timeout, canceled,
	// server, throttled, bad_request, unauthorized, not_found, too_large,
	// other), as counted in the write errors metric.
	Kind string
	// Message is the server's error text (truncated), empty without answer.
	Message string
	// Err is the underlying error.
	Err error
}

// Error describes the failed write.
func (e *WriteError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("write %d points to %q: %v", e.Points, e.Bucket, e.Err)
	}
	return fmt.Sprintf("write %d points to %q: influxdb answered %d %s: %s",
		e.Points, e.Bucket, e.Status, http.StatusText(e.Status), e.Message)
}

// Unwrap returns the underlying error.
func (e *WriteError) Unwrap() error { return e.Err }

// Is matches the sentinels ErrRetryable, ErrBadRequest, ErrUnauthorized,
// ErrNotFound and ErrTooLarge.
func (e *WriteError) Is(target error) bool { return matches(target, e.Status, e.Retryable) }

// QueryError is why a Flux query failed before its result streamed.
type QueryError struct {
	// Status is the HTTP status, 0 when no answer came.
	Status int
	// Retryable is true when the same query may succeed later: no answer,
	// 429, 408, or 5xx other than 500 (1.8's answer to a bad query).
	Retryable bool
	// Message is the server's error text (truncated).
	Message string
	// Err is the underlying error.
	Err error
}

// Error describes the failed query.
func (e *QueryError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("flux query: %v", e.Err)
	}
	return fmt.Sprintf("flux query: influxdb answered %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Unwrap returns the underlying error.
func (e *QueryError) Unwrap() error { return e.Err }

// Is matches the same sentinels as WriteError.Is.
func (e *QueryError) Is(target error) bool { return matches(target, e.Status, e.Retryable) }

func matches(target error, status int, retryable bool) bool {
	switch target {
	case ErrRetryable:
		return retryable
	case ErrBadRequest:
		return status == http.StatusBadRequest
	case ErrUnauthorized:
		return status == http.StatusUnauthorized || status == http.StatusForbidden
	case ErrNotFound:
		return status == http.StatusNotFound
	case ErrTooLarge:
		return status == http.StatusRequestEntityTooLarge
	}
	return false
}

// failure is the classification of an error from the client's HTTP service.
type failure struct {
	status     int
	retryable  bool
	retryAfter time.Duration
	kind       string
	message    string
	err        error
}

const maxMessage = 512

// classify sorts an error of the client's HTTP service into retryable or
// not. now is the clock for an HTTP-date Retry-After.
func classify(perr *influxhttp.Error, now time.Time) failure {
	f := failure{status: perr.StatusCode, err: perr}
	if f.status == 0 {
		// No answer: the request may not even have reached the server.
		f.retryable = true
		f.err = perr.Err
		var nerr net.Error
		switch {
		case errors.Is(perr.Err, context.Canceled):
			f.kind = kindCanceled
		case errors.Is(perr.Err, context.DeadlineExceeded), errors.As(perr.Err, &nerr) && nerr.Timeout():
			f.kind = kindTimeout
		default:
			f.kind = kindNetwork
		}
		return f
	}
	f.message = perr.Message
	if f.message == "" {
		f.message = perr.Error()
	}
	if len(f.message) > maxMessage {
		f.message = f.message[:maxMessage] + "..."
	}
	switch s := f.status; {
	case s == http.StatusBadRequest:
		f.kind = kindBadRequest
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		f.kind = kindUnauthorized
	case s == http.StatusNotFound:
		f.kind = kindNotFound
	case s == http.StatusRequestEntityTooLarge:
		f.kind = kindTooLarge
	case s == http.StatusTooManyRequests:
		f.kind, f.retryable = kindThrottled, true
	case s == http.StatusRequestTimeout:
		f.kind, f.retryable = kindTimeout, true
	case s >= 500:
		f.kind, f.retryable = kindServer, true
	default:
		f.kind = kindOther
	}
	if f.retryable && perr.Header != nil {
		f.retryAfter = parseRetryAfter(perr.Header.Get("Retry-After"), now)
	}
	return f
}

// maxRetryAfter bounds a server's Retry-After so that a bogus header cannot
// park the caller for days.
const maxRetryAfter = 10 * time.Minute

// parseRetryAfter reads delay-seconds or an HTTP-date; 0 when absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// Backoff bounds, exported through Backoff's doc.
const (
	backoffBase = 250 * time.Millisecond
	backoffMax  = 30 * time.Second
)

// Backoff returns how long to wait before retry number attempt (0 for the
// first retry): exponential from 250ms, doubling, capped at 30s, with
// "equal jitter" (a random half on top of a fixed half) so that writers
// that failed together do not retry together yet never retry at once.
func Backoff(attempt int) time.Duration {
	attempt = max(attempt, 0)
	d := backoffMax
	if attempt < 16 {
		d = min(backoffBase<<attempt, backoffMax)
	}
	half := d / 2
	return half + rand.N(half+1)
}

// RetryDelay is the wait before retrying after err: the server's
// Retry-After when it asked for longer than Backoff(attempt), else
// Backoff(attempt).
func RetryDelay(err error, attempt int) time.Duration {
	d := Backoff(attempt)
	var we *WriteError
	if errors.As(err, &we) && we.RetryAfter > d {
		return we.RetryAfter
	}
	return d
}
