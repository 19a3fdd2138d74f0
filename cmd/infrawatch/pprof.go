package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"
)

// pprofEnv names a loopback host:port on which serve exposes
// net/http/pprof, for profiling the hot path under load (the bench tool's
// serve child inherits it). It is not an INFRAWATCH_* setting on purpose:
// those are configuration keys, and this is a developer's switch that is
// off unless set. Only loopback addresses are accepted.
const pprofEnv = "IW_PPROF_LISTEN"

// startPprof serves /debug/pprof/ on $IW_PPROF_LISTEN until ctx ends; it
// does nothing when the variable is unset.
func (s *server) startPprof(ctx context.Context) error {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s=%q: %w", pprofEnv, addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s=%q: pprof listens on a loopback IP only", pprofEnv, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for pprof on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.log.Warn("pprof enabled (developer switch)", "env", pprofEnv, "addr", ln.Addr().String())
	s.goRun("pprof", func(ctx context.Context) error {
		go func() { <-ctx.Done(); _ = srv.Close() }()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve pprof: %w", err)
		}
		return nil
	}, ctx)
	return nil
}
