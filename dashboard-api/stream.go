package dashboardapi

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"

	"github.com/infrawatch/infrawatch/dashboard-api/stream"
)

// CodeBadHandshake is the error code of a request to the websocket route
// that is not a valid websocket upgrade.
const CodeBadHandshake = "bad_handshake"

const streamTokenKey = "infrawatch.stream_token"

// registerStream adds GET /api/v1/stream when a hub is configured. It sits
// outside the /api/v1 group because browsers cannot set headers on a
// websocket: the token may come as ?token= too.
func (s *Server) registerStream() {
	if s.opts.Stream == nil {
		return
	}
	up := &websocket.Upgrader{
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
		// The origin is checked before Upgrade, with the API's error shape.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(errorBody{Error: errorDetail{Code: CodeBadHandshake, Message: reason.Error()}})
		},
	}
	s.engine.GET("/api/v1/stream", streamAuthenticate(s.opts.Tokens), RequireRole(RoleViewer),
		func(c *gin.Context) { s.stream(c, up) })
}

// streamAuthenticate is authenticate with one addition: without an
// Authorization header, ?token= is read (the access log never records the
// query).
func streamAuthenticate(tokens TokenService) gin.HandlerFunc {
	auth := authenticate(tokens)
	return func(c *gin.Context) {
		tok, ok := bearerToken(c.GetHeader("Authorization"))
		if !ok && c.GetHeader("Authorization") == "" {
			if q := strings.TrimSpace(c.Query("token")); q != "" {
				tok = q
				c.Request.Header.Set("Authorization", "Bearer "+q)
			}
		}
		c.Set(streamTokenKey, tok)
		auth(c)
	}
}

// streamOriginAllowed allows requests without an Origin (non-browser
// clients, which authenticate like any other), the page's own origin, and
// the configured AllowedOrigins. Same-origin stays allowed when a list is
// configured, so the built-in dashboard keeps working beside others.
func (s *Server) streamOriginAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || s.OriginAllowed(origin) {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

func (s *Server) stream(c *gin.Context, up *websocket.Upgrader) {
	r := c.Request
	if !s.streamOriginAllowed(r) {
		abort(c, &Error{Status: http.StatusForbidden, Code: CodeForbidden,
			Message: "origin " + r.Header.Get("Origin") + " may not open the stream"})
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		abort(c, &Error{Status: http.StatusBadRequest, Code: CodeBadHandshake,
			Message: "GET /api/v1/stream is a websocket: send an upgrade request"})
		return
	}
	conn, err := up.Upgrade(c.Writer, r, nil)
	if err != nil {
		return // Upgrader.Error has answered
	}
	p, _ := PrincipalFrom(c)
	tok := c.GetString(streamTokenKey)
	tokens := s.opts.Tokens
	s.opts.Stream.Serve(conn, stream.ServeOptions{
		Snapshot: s.streamSnapshot,
		// A revoked token must not keep a dashboard streaming for days.
		Authorized: func() bool {
			p, ok := tokens.Verify(tok)
			return ok && p.Role >= RoleViewer && p.Role <= RoleAdmin
		},
		Name: p.Name,
	})
}

// streamSnapshot is the devices of GET /api/v1/state for a subscription.
func (s *Server) streamSnapshot(f stream.Filter) any {
	snap := s.Snapshot(SnapshotFilter{Domains: f.Domains, Sites: f.Sites, Devices: f.Devices}, time.Now())
	if f.BBox == nil {
		return snap.Devices
	}
	out := snap.Devices[:0]
	for _, d := range snap.Devices {
		if d.Location != nil && f.InBBox(d.Location.Lat, d.Location.Lon) {
			out = append(out, d)
		}
	}
	return out
}
