package dashboardapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/infrawatch/infrawatch/alerts"
)

// AlertService is the alert engine as the API uses it; *alerts.Engine
// implements it. Errors wrap alerts.ErrNotFound (404), alerts.ErrConflict
// (409) or are an *alerts.ValidationError (400).
type AlertService interface {
	ListAlerts(f alerts.AlertFilter) []alerts.Alert
	GetAlert(id string) (alerts.Alert, error)
	Ack(ctx context.Context, id, who, note string) (alerts.Alert, error)
	Resolve(ctx context.Context, id, who, note string) (alerts.Alert, error)

	CreateRule(ctx context.Context, r alerts.Rule) (alerts.Rule, error)
	GetRule(ctx context.Context, id string) (alerts.Rule, error)
	ListRules(ctx context.Context) []alerts.Rule
	UpdateRule(ctx context.Context, id string, r alerts.Rule) (alerts.Rule, error)
	DeleteRule(ctx context.Context, id string) error

	CreateSilence(ctx context.Context, s alerts.Silence) (alerts.Silence, error)
	ListSilences(ctx context.Context) []alerts.Silence
	DeleteSilence(ctx context.Context, id string) error
}

var _ AlertService = (*alerts.Engine)(nil)

// BacktestFunc replays a rule over the stored readings of [start, stop);
// alerts.BacktestSource.Backtest is one. Its errors wrap
// alerts.ErrTooManyReadings (400) or are an *alerts.ValidationError (400).
type BacktestFunc func(ctx context.Context, rule alerts.Rule, start, stop time.Time) (alerts.BacktestResult, error)

// Limits of the alert routes.
const (
	// maxAlertNote bounds an ack or resolve note.
	maxAlertNote = 2000
	// maxBacktestIntervals bounds the intervals one backtest answer lists;
	// "alerts" still counts them all.
	maxBacktestIntervals = 10000
	// maxConcurrentBacktests bounds the backtests running at once: each may
	// hold up to a million readings in memory.
	maxConcurrentBacktests = 2
	// defaultBacktestRange is the range when a backtest gives no start.
	defaultBacktestRange = 7 * 24 * time.Hour
)

// codeBacktestsBusy answers a backtest while maxConcurrentBacktests run.
const codeBacktestsBusy = "too_many_requests"

var (
	errNoAlerts = &Error{Status: http.StatusServiceUnavailable, Code: CodeNotReady,
		Message: "the alert engine is not configured on this server"}
	errNoBacktest = &Error{Status: http.StatusServiceUnavailable, Code: CodeNotReady,
		Message: "backtests are not configured on this server (no InfluxDB)"}
)

// alertRoutes adds the alert, rule, silence and backtest routes. Reading is
// for viewers; acknowledging, resolving, silencing and backtesting for
// operators (a backtest changes nothing but scans InfluxDB, so wallboard
// tokens may not run one); changing rules for admins.
func (s *Server) alertRoutes(viewer, operator, admin gin.HandlerFunc) {
	s.api.GET("/alerts", viewer, s.listAlerts)
	s.api.GET("/alerts/:id", viewer, s.getAlert)
	s.api.POST("/alerts/:id/ack", operator, s.ackAlert)
	s.api.POST("/alerts/:id/resolve", operator, s.resolveAlert)

	s.api.GET("/rules", viewer, s.listRules)
	s.api.POST("/rules", admin, s.createRule)
	s.api.POST("/rules/backtest", operator, s.backtestRule(make(chan struct{}, maxConcurrentBacktests)))
	s.api.GET("/rules/:id", viewer, s.getRule)
	s.api.PUT("/rules/:id", admin, s.updateRule)
	s.api.DELETE("/rules/:id", admin, s.deleteRule)

	s.api.GET("/silences", viewer, s.listSilences)
	s.api.POST("/silences", operator, s.createSilence)
	s.api.DELETE("/silences/:id", operator, s.deleteSilence)
}

// alertsOr answers 503 and returns nil when no engine is wired.
func (s *Server) alertsOr(c *gin.Context) AlertService {
	if s.opts.Alerts == nil {
		abort(c, errNoAlerts)
	}
	return s.opts.Alerts
}

type alertList struct {
	Alerts []alerts.Alert `json:"alerts"`
}

func (s *Server) listAlerts(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	f := alerts.AlertFilter{State: c.Query("state"), Severity: c.Query("severity"),
		DeviceID: c.Query("device_id"), Site: c.Query("site")}
	fields := map[string]string{}
	if f.State != "" {
		if _, err := alerts.ParseState(f.State); err != nil {
			fields["state"] = "must be firing, acknowledged, resolved or pending"
		}
	}
	switch f.Severity {
	case "", alerts.SeverityInfo, alerts.SeverityWarning, alerts.SeverityCritical:
	default:
		fields["severity"] = "must be info, warning or critical"
	}
	if len(fields) > 0 {
		abort(c, &ValidationError{Fields: fields})
		return
	}
	out := alertList{Alerts: svc.ListAlerts(f)}
	if out.Alerts == nil {
		out.Alerts = []alerts.Alert{}
	}
	c.JSON(http.StatusOK, out)
}

func (s *Server) getAlert(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	a, err := svc.GetAlert(c.Param("id"))
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, a)
}

// alertActionRequest is the body of ack and resolve; the body may be empty.
type alertActionRequest struct {
	Note string `json:"note"`
}

func (s *Server) ackAlert(c *gin.Context)     { s.alertAction(c, AlertService.Ack) }
func (s *Server) resolveAlert(c *gin.Context) { s.alertAction(c, AlertService.Resolve) }

// alertAction runs an ack or resolve as the principal: its token's name is
// recorded as who did it, the engine's clock as when.
func (s *Server) alertAction(c *gin.Context, act func(AlertService, context.Context, string, string, string) (alerts.Alert, error)) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	var req alertActionRequest
	if c.Request.Body != nil {
		raw, err := io.ReadAll(c.Request.Body) // bounded by limitBody
		if err != nil {
			abort(c, err)
			return
		}
		// No body (or only white space) is no note.
		if len(bytes.TrimSpace(raw)) > 0 {
			if err := strictJSON(raw, &req); err != nil {
				abort(c, err)
				return
			}
		}
	}
	if len(req.Note) > maxAlertNote {
		abort(c, &ValidationError{Fields: map[string]string{"note": "at most " + strconv.Itoa(maxAlertNote) + " bytes"}})
		return
	}
	p, _ := PrincipalFrom(c)
	a, err := act(svc, c.Request.Context(), c.Param("id"), p.Name, strings.TrimSpace(req.Note))
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, a)
}

type ruleList struct {
	Rules []alerts.Rule `json:"rules"`
}

func (s *Server) listRules(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	out := ruleList{Rules: svc.ListRules(c.Request.Context())}
	if out.Rules == nil {
		out.Rules = []alerts.Rule{}
	}
	c.JSON(http.StatusOK, out)
}

func (s *Server) getRule(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	r, err := svc.GetRule(c.Request.Context(), c.Param("id"))
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, r)
}

// decodeRule reads a rule body. A rule that leaves out "enabled" is
// enabled. encoding/json reports a bad duration without its field, so the
// duration fields are tried one by one to name it.
func decodeRule(c *gin.Context) (alerts.Rule, error) {
	r := alerts.Rule{Enabled: true}
	raw, err := readJSONBody(c)
	if err != nil {
		return r, err
	}
	return r, decodeRuleBytes(raw, &r)
}

func decodeRuleBytes(raw json.RawMessage, r *alerts.Rule) error {
	if err := strictJSON(raw, r); err != nil {
		var he *Error
		if errors.As(err, &he) && he.Code == CodeInvalidJSON {
			if f := badDurationFields(raw); len(f) > 0 {
				return &ValidationError{Fields: f}
			}
		}
		return err
	}
	return nil
}

// badDurationFields names the duration fields of a rule body that do not
// parse as durations.
func badDurationFields(raw []byte) map[string]string {
	var parts struct {
		For        json.RawMessage `json:"for"`
		ReackAfter json.RawMessage `json:"reack_after"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return nil
	}
	out := map[string]string{}
	for name, v := range map[string]json.RawMessage{"for": parts.For, "reack_after": parts.ReackAfter} {
		var d alerts.Duration
		if len(v) > 0 && d.UnmarshalJSON(v) != nil {
			out[name] = `must be a duration like "5m" or a number of seconds`
		}
	}
	return out
}

// readJSONBody reads the body as one JSON value, with DecodeJSON's errors.
func readJSONBody(c *gin.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := DecodeJSON(c, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// strictJSON decodes raw into v as DecodeJSON does a body: unknown fields and
// wrong types name the field, trailing data is refused.
func strictJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidJSON,
			Message: "request body must hold a single JSON value"}
	}
	return nil
}

func (s *Server) createRule(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	r, err := decodeRule(c)
	if err != nil {
		abort(c, err)
		return
	}
	out, err := svc.CreateRule(c.Request.Context(), r)
	if err != nil {
		abort(c, err)
		return
	}
	c.Header("Location", "/api/v1/rules/"+out.ID)
	c.JSON(http.StatusCreated, out)
}

func (s *Server) updateRule(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	r, err := decodeRule(c)
	if err != nil {
		abort(c, err)
		return
	}
	id := c.Param("id")
	if r.ID != "" && r.ID != id {
		abort(c, &ValidationError{Fields: map[string]string{"id": "does not match the id in the path; a rule cannot be renamed"}})
		return
	}
	out, err := svc.UpdateRule(c.Request.Context(), id, r)
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, out)
}

func (s *Server) deleteRule(c *gin.Context) { s.deleteByID(c, AlertService.DeleteRule) }

// deleteByID answers a DELETE of the resource :id with del: 204, or the
// error del returns.
func (s *Server) deleteByID(c *gin.Context, del func(AlertService, context.Context, string) error) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	if err := del(svc, c.Request.Context(), c.Param("id")); err != nil {
		abort(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

type silenceList struct {
	Silences []alerts.Silence `json:"silences"`
}

func (s *Server) listSilences(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	out := silenceList{Silences: svc.ListSilences(c.Request.Context())}
	if out.Silences == nil {
		out.Silences = []alerts.Silence{}
	}
	c.JSON(http.StatusOK, out)
}

// silenceRequest is the body of POST /silences; created_by is the caller.
// The times are strings so that a bad one is named (encoding/json does not
// say which time failed to parse).
type silenceRequest struct {
	ID       string          `json:"id"`
	Selector alerts.Selector `json:"selector"`
	Start    string          `json:"start"`
	End      string          `json:"end"`
	Comment  string          `json:"comment"`
}

func (s *Server) createSilence(c *gin.Context) {
	svc := s.alertsOr(c)
	if svc == nil {
		return
	}
	var req silenceRequest
	if err := DecodeJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	fields := map[string]string{}
	var start, end time.Time
	for name, v := range map[string]string{"start": req.Start, "end": req.End} {
		if v == "" {
			continue // the engine defaults start and requires end
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			fields[name] = "must be an RFC 3339 time like 2026-03-02T08:00:00Z"
		}
		if name == "start" {
			start = t
		} else {
			end = t
		}
	}
	if len(fields) > 0 {
		abort(c, &ValidationError{Fields: fields})
		return
	}
	p, _ := PrincipalFrom(c)
	out, err := svc.CreateSilence(c.Request.Context(), alerts.Silence{ID: req.ID, Selector: req.Selector,
		Start: start, End: end, Comment: req.Comment, CreatedBy: p.Name})
	if err != nil {
		abort(c, err)
		return
	}
	c.Header("Location", "/api/v1/silences/"+out.ID)
	c.JSON(http.StatusCreated, out)
}

func (s *Server) deleteSilence(c *gin.Context) { s.deleteByID(c, AlertService.DeleteSilence) }

// backtestRequest is the body of POST /rules/backtest: a rule (as it would
// be created) or the id of a stored one, and the range. start and stop are
// RFC 3339 or relative to now ("-7d", "-36h", "now"); start defaults to
// 7 days before stop, stop to now.
type backtestRequest struct {
	Rule   json.RawMessage `json:"rule"`
	RuleID string          `json:"rule_id"`
	Start  string          `json:"start"`
	Stop   string          `json:"stop"`
}

// backtestInterval is one alert a backtest found. End is null (and
// duration_s runs to stop) when it was still open at the end of the range.
type backtestInterval struct {
	DeviceID  string     `json:"device_id"`
	Start     time.Time  `json:"start"`
	End       *time.Time `json:"end"`
	DurationS float64    `json:"duration_s"`
	Value     float64    `json:"value"`
	Since     time.Time  `json:"since"`
}

type backtestResponse struct {
	Alerts          int                `json:"alerts"`
	Intervals       []backtestInterval `json:"intervals"`
	Truncated       bool               `json:"truncated"`
	ReadingsScanned int                `json:"readings_scanned"`
	Start           time.Time          `json:"start"`
	Stop            time.Time          `json:"stop"`
}

// backtestRule answers POST /rules/backtest; slots bounds the backtests
// running at once.
func (s *Server) backtestRule(slots chan struct{}) gin.HandlerFunc {
	return func(c *gin.Context) { s.backtest(c, slots) }
}

func (s *Server) backtest(c *gin.Context, slots chan struct{}) {
	if s.opts.Backtest == nil {
		abort(c, errNoBacktest)
		return
	}
	var req backtestRequest
	if err := DecodeJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	fields := map[string]string{}
	now := time.Now()
	stop, err := parseBacktestTime(req.Stop, now)
	if err != nil {
		fields["stop"] = err.Error()
	}
	start := stop.Add(-defaultBacktestRange)
	if req.Start != "" {
		if start, err = parseBacktestTime(req.Start, now); err != nil {
			fields["start"] = err.Error()
		}
	}
	hasRule := len(req.Rule) > 0 && string(req.Rule) != "null"
	var rule alerts.Rule
	switch {
	case hasRule && req.RuleID != "":
		fields["rule_id"] = "give rule or rule_id, not both"
	case hasRule:
		rule.Enabled = true
		if err := decodeRuleBytes(req.Rule, &rule); err != nil {
			abort(c, prefixFields(err, "rule."))
			return
		}
	case req.RuleID != "":
		svc := s.alertsOr(c)
		if svc == nil {
			return
		}
		if rule, err = svc.GetRule(c.Request.Context(), req.RuleID); err != nil {
			abort(c, err)
			return
		}
	default:
		fields["rule"] = "required (or rule_id)"
	}
	if len(fields) > 0 {
		abort(c, &ValidationError{Fields: fields})
		return
	}
	select {
	case slots <- struct{}{}:
		defer func() { <-slots }()
	default:
		c.Header("Retry-After", "5")
		abort(c, &Error{Status: http.StatusTooManyRequests, Code: codeBacktestsBusy,
			Message: "other backtests are running; try again shortly"})
		return
	}
	res, err := s.opts.Backtest(c.Request.Context(), rule, start, stop)
	if err != nil {
		var ve *alerts.ValidationError
		switch {
		case errors.Is(err, alerts.ErrTooManyReadings):
			// The range (with the selector) is what is too wide.
			abort(c, &ValidationError{Fields: map[string]string{"start": err.Error()}})
		case hasRule && errors.As(err, &ve):
			abort(c, prefixFields(err, "rule."))
		default:
			abort(c, err)
		}
		return
	}
	out := backtestResponse{Alerts: len(res.Intervals), Intervals: []backtestInterval{},
		ReadingsScanned: res.ReadingsScanned, Start: start.UTC(), Stop: stop.UTC()}
	for _, iv := range res.Intervals {
		if len(out.Intervals) == maxBacktestIntervals {
			out.Truncated = true
			break
		}
		bi := backtestInterval{DeviceID: iv.DeviceID, Start: iv.Start, Value: iv.Value, Since: iv.Since}
		end := stop
		if !iv.End.IsZero() {
			e := iv.End
			bi.End, end = &e, e
		}
		bi.DurationS = end.Sub(iv.Start).Seconds()
		out.Intervals = append(out.Intervals, bi)
	}
	c.JSON(http.StatusOK, out)
}

// prefixFields puts prefix before the field names of a validation error
// about the rule inside a backtest body, so that the client sees
// "rule.metric", not "metric". Range fields (start, stop) keep their names.
func prefixFields(err error, prefix string) error {
	var fields map[string]string
	var ve *ValidationError
	var ave *alerts.ValidationError
	switch {
	case errors.As(err, &ve):
		fields = ve.Fields
	case errors.As(err, &ave):
		fields = ave.Fields
	default:
		return err
	}
	out := make(map[string]string, len(fields))
	for k, v := range fields {
		if k != "start" && k != "stop" {
			k = prefix + k
		}
		out[k] = v
	}
	return &ValidationError{Fields: out}
}

// parseBacktestTime reads an RFC 3339 time, "now", or a time relative to
// now: a negative Go duration ("-36h", "-90m") or a number of days or weeks
// ("-7d", "-2w"). Empty means now.
func parseBacktestTime(v string, now time.Time) (time.Time, error) {
	v = strings.TrimSpace(v)
	if v == "" || v == "now" {
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	bad := errors.New(`must be RFC 3339 (2026-03-02T08:00:00Z) or relative to now ("-7d", "-24h", "now")`)
	if !strings.HasPrefix(v, "-") {
		return time.Time{}, bad
	}
	unit := map[byte]time.Duration{'d': 24 * time.Hour, 'w': 7 * 24 * time.Hour}[v[len(v)-1]]
	if unit != 0 {
		n, err := strconv.Atoi(v[1 : len(v)-1])
		if err != nil || n < 0 || n > 3650 {
			return time.Time{}, bad
		}
		return now.Add(-time.Duration(n) * unit), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return time.Time{}, bad
	}
	return now.Add(d), nil
}
