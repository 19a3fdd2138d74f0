package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/infrawatch/infrawatch/alerts"
	"github.com/infrawatch/infrawatch/auth"
	dashboardapi "github.com/infrawatch/infrawatch/dashboard-api"
)

// newAPI builds the HTTP API over the running components.
func (s *server) newAPI() (http.Handler, error) {
	api, err := dashboardapi.New(dashboardapi.Options{
		Devices:        s.registry,
		Live:           s.live,
		Tokens:         apiTokens{s.tokens},
		DeadLetters:    s.ingester,
		Ready:          s.ready,
		AlertCount:     s.alerts.ActiveCount,
		Alerts:         s.alerts,
		Backtest:       alerts.BacktestSource{Querier: s.store, Bucket: s.store.Bucket(), Lookup: s.registry.Lookup}.Backtest,
		Stream:         s.hub,
		History:        s.history,
		Gatherer:       s.metrics,
		Registerer:     s.metrics,
		MaxBodyBytes:   s.cfg.HTTP.MaxBodyBytes,
		AllowedOrigins: s.cfg.HTTP.AllowedOrigins,
		AuthFailures:   failureLimiter(s.cfg.Auth),
		Logger:         s.log.With("component", "api"),
	})
	if err != nil {
		return nil, fmt.Errorf("HTTP API: %w", err)
	}
	return api.Handler(), nil
}

// apiTokens adapts auth.Tokens to the API's token service.
type apiTokens struct{ t *auth.Tokens }

func (a apiTokens) Create(ctx context.Context, name string, role dashboardapi.Role) (dashboardapi.Token, string, error) {
	r, err := auth.ParseRole(role.String())
	if err != nil {
		return dashboardapi.Token{}, "", err
	}
	tok, secret, err := a.t.Create(ctx, name, r)
	return dashboardapi.Token(tok), secret, err
}

func (a apiTokens) List() []dashboardapi.Token {
	list := a.t.List()
	out := make([]dashboardapi.Token, len(list))
	for i, t := range list {
		out[i] = dashboardapi.Token(t)
	}
	return out
}

func (a apiTokens) Delete(ctx context.Context, id string) error { return a.t.Delete(ctx, id) }

func (a apiTokens) Verify(secret string) (dashboardapi.Principal, bool) {
	tok, role, ok := a.t.Verify(secret)
	if !ok {
		return dashboardapi.Principal{}, false
	}
	r, ok := dashboardapi.ParseRole(role.String())
	return dashboardapi.Principal{TokenID: tok.ID, Name: tok.Name, Role: r}, ok
}
