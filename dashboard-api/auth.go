package dashboardapi

import (
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
)

// Role is what a token may do. Roles are ordered: each includes the ones
// below it.
type Role int

// Roles, lowest first. The zero value is no role at all.
const (
	RoleViewer   Role = iota + 1 // read and stream
	RoleOperator                 // also acknowledge, resolve, silence
	RoleAdmin                    // also devices, rules, tokens
)

// String returns the role's name as it appears in JSON.
func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	default:
		return "none"
	}
}

// ParseRole maps a role name (viewer, operator, admin) to its Role.
func ParseRole(s string) (Role, bool) {
	switch s {
	case "viewer":
		return RoleViewer, true
	case "operator":
		return RoleOperator, true
	case "admin":
		return RoleAdmin, true
	default:
		return 0, false
	}
}

const (
	principalKey = "infrawatch.principal"
	requestIDKey = "infrawatch.request_id"
)

// PrincipalFrom returns who the request acts as; false outside routes that
// passed authentication.
func PrincipalFrom(c *gin.Context) (Principal, bool) {
	v, ok := c.Get(principalKey)
	if !ok {
		return Principal{}, false
	}
	p, ok := v.(Principal)
	return p, ok
}

var errUnauthorized = &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized,
	Message: "missing or invalid bearer token"}

// bearerToken extracts the token from "Authorization: Bearer <token>"; the
// scheme is case-insensitive (RFC 7235).
func bearerToken(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// authenticate resolves the bearer token to a Principal or answers 401.
func authenticate(tokens TokenService) gin.HandlerFunc {
	return func(c *gin.Context) {
		tok, ok := bearerToken(c.GetHeader("Authorization"))
		if !ok {
			c.Header("WWW-Authenticate", `Bearer realm="infrawatch"`)
			abort(c, errUnauthorized)
			return
		}
		p, ok := tokens.Verify(tok)
		if !ok || p.Role < RoleViewer || p.Role > RoleAdmin {
			c.Header("WWW-Authenticate", `Bearer realm="infrawatch", error="invalid_token"`)
			abort(c, errUnauthorized)
			return
		}
		c.Set(principalKey, p)
		c.Next()
	}
}

// RequireRole answers 403 unless the authenticated principal has at least
// role min. Use it on routes inside Server.API().
func RequireRole(min Role) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, ok := PrincipalFrom(c)
		if !ok {
			// A route registered outside the authenticated group: fail closed.
			abort(c, errUnauthorized)
			return
		}
		if p.Role < min {
			abort(c, &Error{Status: http.StatusForbidden, Code: CodeForbidden,
				Message: "this needs the " + min.String() + " role; the token has " + p.Role.String()})
			return
		}
		c.Next()
	}
}
