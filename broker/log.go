package broker

import (
	"context"
	"log/slog"
)

// minLevel adapts our logger for mochi: it drops records below min (mochi's
// debug and info are per-connection chatter) and the message-less warning
// mochi's TCP listener writes whenever a connection ends with an error (EOF,
// a refused CONNECT, a reset): with a fleet of devices that is one line per
// reconnect, and refusals are already logged by the auth hook with a reason.
type minLevel struct {
	slog.Handler
	min slog.Level
}

// Enabled implements slog.Handler.
func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (h minLevel) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "" {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

// WithGroup implements slog.Handler.
func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(name), min: h.min}
}
