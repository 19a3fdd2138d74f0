package dashboardapi

import (
	"github.com/infrawatch/infrawatch/alerts"
	"github.com/infrawatch/infrawatch/auth"
	"github.com/infrawatch/infrawatch/devices"

	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/gin-gonic/gin"
)

// Sentinel errors the services wrap; the error middleware maps them to
// status codes.
var (
	// ErrNotFound means the addressed resource does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict means the request clashes with existing state, such as a
	// create with an id already in use (409).
	ErrConflict = errors.New("conflict")
)

// ValidationError reports invalid input, field by field (400). Fields maps a
// JSON field name to what is wrong with it.
type ValidationError struct {
	Fields map[string]string
}

// Error lists the fields in a stable order.
func (e ValidationError) Error() string {
	if len(e.Fields) == 0 {
		return "invalid input"
	}
	names := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		names = append(names, k)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, k := range names {
		parts = append(parts, k+": "+e.Fields[k])
	}
	return "invalid input: " + strings.Join(parts, "; ")
}

// Error is an error whose HTTP rendering the handler decided itself. Handlers
// of later routes may pass one to c.Error.
type Error struct {
	Status  int
	Code    string
	Message string
	Fields  map[string]string
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// Error codes in the "code" member of an error body.
const (
	CodeInvalidJSON      = "invalid_json"
	CodeValidation       = "validation_failed"
	CodeUnauthorized     = "unauthorized"
	CodeForbidden        = "forbidden"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeConflict         = "conflict"
	CodeTooLarge         = "payload_too_large"
	CodeNotReady         = "not_ready"
	CodeInternal         = "internal"
)

// errorBody is the one error shape of the API.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}

// classify maps an error to its status and body. Unknown errors become a
// generic 500 so internals never reach the client.
func classify(err error) (int, errorDetail) {
	var he *Error
	var ve *ValidationError
	var vv ValidationError // a service may return the value form too
	var mbe *http.MaxBytesError
	var dve *devices.ValidationError
	var ave *alerts.ValidationError
	switch {
	case errors.As(err, &ave):
		return http.StatusBadRequest, errorDetail{Code: CodeValidation, Message: ave.Error(), Fields: ave.Fields}
	case errors.As(err, &dve):
		return http.StatusBadRequest, errorDetail{Code: CodeValidation, Message: dve.Error(), Fields: dve.Fields}
	case errors.Is(err, auth.ErrInvalid):
		return http.StatusBadRequest, errorDetail{Code: CodeValidation, Message: err.Error()}
	case errors.As(err, &he):
		return he.Status, errorDetail{Code: he.Code, Message: he.Message, Fields: he.Fields}
	case errors.As(err, &ve):
		return http.StatusBadRequest, errorDetail{Code: CodeValidation, Message: ve.Error(), Fields: ve.Fields}
	case errors.As(err, &vv):
		return http.StatusBadRequest, errorDetail{Code: CodeValidation, Message: vv.Error(), Fields: vv.Fields}
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, errorDetail{Code: CodeTooLarge,
			Message: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
	case errors.Is(err, ErrNotFound), errors.Is(err, devices.ErrNotFound), errors.Is(err, auth.ErrNotFound),
		errors.Is(err, alerts.ErrNotFound):
		return http.StatusNotFound, errorDetail{Code: CodeNotFound, Message: err.Error()}
	case errors.Is(err, ErrConflict), errors.Is(err, devices.ErrExists), errors.Is(err, auth.ErrLimit),
		errors.Is(err, alerts.ErrConflict):
		return http.StatusConflict, errorDetail{Code: CodeConflict, Message: err.Error()}
	default:
		return http.StatusInternalServerError, errorDetail{Code: CodeInternal, Message: "internal server error"}
	}
}

// errorHandler renders the first error a handler attached with c.Error, in
// the API's error shape. It is the only place errors become responses.
func errorHandler(log *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Next()
		if len(c.Errors) == 0 {
			return
		}
		err := c.Errors[0].Err
		status, detail := classify(err)
		var p errPanic
		if status >= 500 && !errors.As(err, &p) { // recovery already logged panics with their stack
			// The detail goes to the log only; the client gets a generic message.
			log.Error("request failed", "method", c.Request.Method, "path", c.Request.URL.Path,
				"request_id", c.GetString(requestIDKey), "err", err)
		}
		if c.Writer.Written() {
			// A handler already started the answer; all that is left is the log.
			if status < 500 {
				log.Warn("error after response started", "path", c.Request.URL.Path, "err", err)
			}
			return
		}
		c.AbortWithStatusJSON(status, errorBody{Error: detail})
	}
}

// errPanic is what a recovered panic becomes; its text is logged, never sent.
type errPanic struct{ v any }

func (e errPanic) Error() string { return fmt.Sprintf("panic: %v", e.v) }

// recovery replaces gin.Recovery: it logs the panic with its stack and hands
// a 500 to the error handler so the client sees the usual JSON and no stack.
func recovery(log *slog.Logger) gin.HandlerFunc {
	return func(c *gin.Context) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
				// net/http's way to abort a response silently; let it through.
				panic(v)
			}
			log.Error("panic in handler", "method", c.Request.Method, "path", c.Request.URL.Path,
				"request_id", c.GetString(requestIDKey), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			_ = c.Error(errPanic{v})
			c.Abort()
		}()
		c.Next()
	}
}

// abort attaches err for the error handler and stops the chain.
func abort(c *gin.Context, err error) {
	_ = c.Error(err)
	c.Abort()
}

func notFound(c *gin.Context) {
	abort(c, &Error{Status: http.StatusNotFound, Code: CodeNotFound,
		Message: "no route for " + c.Request.Method + " " + c.Request.URL.Path})
}

func methodNotAllowed(c *gin.Context) {
	abort(c, &Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
		Message: c.Request.Method + " is not allowed on " + c.Request.URL.Path + "; allowed: " + c.Writer.Header().Get("Allow")})
}
