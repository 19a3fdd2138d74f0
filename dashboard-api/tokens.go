package dashboardapi

import (
	"net/http"
	"sort"
	"strings"

	"github.com/gin-gonic/gin"
)

// tokenRequest is the body of POST /tokens.
type tokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// tokenCreated is the answer to POST /tokens: the only time the token's
// secret is shown.
type tokenCreated struct {
	Token
	Secret string `json:"token"`
}

type tokenList struct {
	Tokens []Token `json:"tokens"`
}

const maxTokenName = 128

func (s *Server) listTokens(c *gin.Context) {
	toks := s.opts.Tokens.List()
	out := tokenList{Tokens: append(make([]Token, 0, len(toks)), toks...)}
	sort.Slice(out.Tokens, func(i, j int) bool { return out.Tokens[i].CreatedAt.Before(out.Tokens[j].CreatedAt) })
	c.JSON(http.StatusOK, out)
}

func (s *Server) createToken(c *gin.Context) {
	var req tokenRequest
	if err := DecodeJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	fields := map[string]string{}
	name := strings.TrimSpace(req.Name)
	switch {
	case name == "":
		fields["name"] = "required"
	case len(name) > maxTokenName:
		fields["name"] = "at most 128 bytes"
	}
	role, ok := ParseRole(req.Role)
	if !ok {
		fields["role"] = "must be viewer, operator or admin"
	}
	if len(fields) > 0 {
		abort(c, &ValidationError{Fields: fields})
		return
	}
	tok, secret, err := s.opts.Tokens.Create(c.Request.Context(), name, role)
	if err != nil {
		abort(c, err)
		return
	}
	c.Header("Cache-Control", "no-store") // the answer holds a credential
	c.JSON(http.StatusCreated, tokenCreated{Token: tok, Secret: secret})
}

func (s *Server) deleteToken(c *gin.Context) {
	if err := s.opts.Tokens.Delete(c.Request.Context(), c.Param("id")); err != nil {
		abort(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}
