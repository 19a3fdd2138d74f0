package dashboardapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/infrawatch/infrawatch/ingest"
)

// DeadLetterService lists ingest's dead letters and replays them
// (ingest.Ingester implements it).
type DeadLetterService interface {
	DeadLetters(f ingest.DeadLetterFilter) []ingest.StoredDeadLetter
	ReplayDeadLetters(ctx context.Context, sel ingest.ReplaySelector) (ingest.ReplayResult, error)
}

// Bounds of GET /deadletters.
const (
	defaultDeadLetterLimit = 100
	maxDeadLetterLimit     = 1000
	maxReplayIDs           = 10000
)

type deadLetterList struct {
	DeadLetters []ingest.StoredDeadLetter `json:"deadletters"`
}

// replayRequest is the body of POST /deadletters/replay: ids, or a reason
// (with an optional device_id).
type replayRequest struct {
	IDs      []uint64 `json:"ids"`
	Reason   string   `json:"reason"`
	DeviceID string   `json:"device_id"`
}

// registerDeadLetters adds the dead-letter routes (admin only: payloads
// are raw device input).
func (s *Server) registerDeadLetters(admin gin.HandlerFunc) {
	s.api.GET("/deadletters", admin, s.listDeadLetters)
	s.api.POST("/deadletters/replay", admin, s.replayDeadLetters)
}

var errNoDeadLetters = &Error{Status: http.StatusServiceUnavailable, Code: CodeNotReady, Message: "dead letters are not available (ingest is not wired)"}

func (s *Server) listDeadLetters(c *gin.Context) {
	if s.opts.DeadLetters == nil {
		abort(c, errNoDeadLetters)
		return
	}
	limit := defaultDeadLetterLimit
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDeadLetterLimit {
			abort(c, &ValidationError{Fields: map[string]string{"limit": "an integer from 1 to 1000"}})
			return
		}
		limit = n
	}
	list := s.opts.DeadLetters.DeadLetters(ingest.DeadLetterFilter{
		Reason: c.Query("reason"), DeviceID: c.Query("device_id"), Limit: limit,
	})
	if list == nil {
		list = []ingest.StoredDeadLetter{}
	}
	c.JSON(http.StatusOK, deadLetterList{DeadLetters: list})
}

func (s *Server) replayDeadLetters(c *gin.Context) {
	if s.opts.DeadLetters == nil {
		abort(c, errNoDeadLetters)
		return
	}
	var req replayRequest
	if err := DecodeJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	fields := map[string]string{}
	switch {
	case len(req.IDs) == 0 && req.Reason == "":
		fields["ids"] = "give ids or a reason"
	case len(req.IDs) > 0 && (req.Reason != "" || req.DeviceID != ""):
		fields["ids"] = "give ids or a reason, not both"
	case len(req.IDs) > maxReplayIDs:
		fields["ids"] = "at most 10000"
	}
	if len(fields) > 0 {
		abort(c, &ValidationError{Fields: fields})
		return
	}
	res, err := s.opts.DeadLetters.ReplayDeadLetters(c.Request.Context(), ingest.ReplaySelector{
		IDs: req.IDs, Reason: req.Reason, DeviceID: req.DeviceID,
	})
	if errors.Is(err, ingest.ErrNotRunning) {
		abort(c, &Error{Status: http.StatusServiceUnavailable, Code: CodeNotReady, Message: err.Error()})
		return
	}
	if err != nil {
		abort(c, err)
		return
	}
	if res.NotFound == nil {
		res.NotFound = []uint64{}
	}
	if res.NotReplayable == nil {
		res.NotReplayable = []uint64{}
	}
	c.JSON(http.StatusOK, res)
}
