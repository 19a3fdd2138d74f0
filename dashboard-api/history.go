package dashboardapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/infrawatch/infrawatch/history"
)

// HistoryService answers history questions from InfluxDB; *history.Service
// is one. Parse* validate request parameters (errors name the parameter),
// Prepare picks the storage tier, Collect and WriteCSV run the query.
type HistoryService interface {
	ParseQuery(v url.Values, export bool) (history.Query, error)
	Prepare(q history.Query) (history.Plan, error)
	Collect(ctx context.Context, p history.Plan) (history.Answer, error)
	WriteCSV(ctx context.Context, w io.Writer, p history.Plan, begin func()) error
	ParseAvailability(v url.Values) (history.AvailabilityQuery, error)
	Availability(ctx context.Context, q history.AvailabilityQuery) ([]history.Availability, error)
}

// registerHistory adds the history routes (viewer and above).
func (s *Server) registerHistory(viewer gin.HandlerFunc) {
	s.api.GET("/history", viewer, s.historyQuery)
	s.api.GET("/history/p95", viewer, s.historyP95)
	s.api.GET("/history/availability", viewer, s.historyAvailability)
}

// historyError renders the history package's parameter errors as 400s
// naming the parameter; anything else goes to the error handler (500).
func historyError(c *gin.Context, err error) {
	var ve history.ValidationErrors
	var pe *history.ParamError
	switch {
	case errors.As(err, &ve):
		abort(c, &Error{Status: http.StatusBadRequest, Code: CodeValidation, Message: ve.Error(), Fields: ve})
	case errors.As(err, &pe):
		abort(c, &Error{Status: http.StatusBadRequest, Code: CodeValidation, Message: pe.Error(),
			Fields: map[string]string{pe.Param: pe.Message}})
	default:
		abort(c, err)
	}
}

// wantsCSV: Accept: text/csv, or format=csv for links in a browser.
func wantsCSV(c *gin.Context) bool {
	return strings.Contains(c.GetHeader("Accept"), "text/csv") || c.Query("format") == "csv"
}

func (s *Server) historyQuery(c *gin.Context) {
	v := c.Request.URL.Query()
	v.Del("format")
	s.answerHistory(c, v)
}

// historyP95 is /history with the planners' defaults: p95 per site per day.
func (s *Server) historyP95(c *gin.Context) {
	v := c.Request.URL.Query()
	v.Del("format")
	if a := v.Get("agg"); a != "" && a != string(history.AggP95) {
		abort(c, &Error{Status: http.StatusBadRequest, Code: CodeValidation, Message: "agg: is always p95 here",
			Fields: map[string]string{"agg": "is always p95 here"}})
		return
	}
	v.Set("agg", string(history.AggP95))
	if v.Get("group_by") == "" {
		v.Set("group_by", string(history.BySite))
	}
	if v.Get("every") == "" {
		v.Set("every", "1d")
	}
	if v.Get("start") == "" {
		v.Set("start", "-7d")
	}
	s.answerHistory(c, v)
}

func (s *Server) answerHistory(c *gin.Context, v url.Values) {
	export := wantsCSV(c)
	q, err := s.opts.History.ParseQuery(v, export)
	if err != nil {
		historyError(c, err)
		return
	}
	p, err := s.opts.History.Prepare(q)
	if err != nil {
		historyError(c, err)
		return
	}
	if !export {
		a, err := s.opts.History.Collect(c.Request.Context(), p)
		if err != nil {
			historyError(c, err)
			return
		}
		c.JSON(http.StatusOK, a)
		return
	}
	begin := func() {
		h := c.Writer.Header()
		h.Set("Content-Type", "text/csv; charset=utf-8")
		h.Set("Content-Disposition", `attachment; filename="history-`+q.Metric+`-`+string(q.Agg)+`.csv"`)
		h.Set("X-Infrawatch-Source", p.Source)
		c.Status(http.StatusOK)
		c.Writer.WriteHeaderNow()
	}
	started := false
	err = s.opts.History.WriteCSV(c.Request.Context(), c.Writer, p, func() { started = true; begin() })
	if err == nil {
		return
	}
	if !started {
		historyError(c, err)
		return
	}
	// The export is cut short: end the connection without the final chunk,
	// so the client sees a failed download rather than a short file.
	s.opts.Logger.Error("history export failed after it started", "path", c.Request.URL.Path,
		"request_id", c.GetString(requestIDKey), "err", err)
	panic(http.ErrAbortHandler)
}

// availabilityAnswer is the JSON of /history/availability.
type availabilityAnswer struct {
	Start   time.Time              `json:"start"`
	Stop    time.Time              `json:"stop"`
	Exclude []history.Interval     `json:"exclude"`
	Devices []history.Availability `json:"devices"`
}

// historyAvailability reports, per registered device matching the filter
// (retired ones left out), the share of its expected readings received.
func (s *Server) historyAvailability(c *gin.Context) {
	q, err := s.opts.History.ParseAvailability(c.Request.URL.Query())
	if err != nil {
		historyError(c, err)
		return
	}
	var devs []Device
	if q.Filter.DeviceID != "" {
		d, err := s.opts.Devices.Get(q.Filter.DeviceID)
		if err != nil {
			abort(c, err)
			return
		}
		devs = []Device{d}
	} else {
		devs = s.opts.Devices.List(DeviceFilter{Domain: q.Filter.Domain, Site: q.Filter.Site, Type: q.Filter.Type})
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].ID < devs[j].ID })
	for _, d := range devs {
		if d.Lifecycle == "retired" {
			continue
		}
		q.Devices = append(q.Devices, history.ExpectedDevice{ID: d.ID, Interval: time.Duration(d.ExpectedInterval) * time.Second})
	}
	res, err := s.opts.History.Availability(c.Request.Context(), q)
	if err != nil {
		historyError(c, err)
		return
	}
	if q.Exclude == nil {
		q.Exclude = []history.Interval{}
	}
	c.JSON(http.StatusOK, availabilityAnswer{Start: q.Start, Stop: q.Stop, Exclude: q.Exclude, Devices: res})
}
