package store

import (
	"strings"
	"time"
)

// FluxString returns s as a quoted Flux string literal, safe to splice into
// a query (device ids, sites, metric names from a request): backslash,
// double quote, newline, carriage return and tab are escaped, and so is
// "${", which would otherwise start an interpolation.
func FluxString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '$':
			if i+1 < len(s) && s[i+1] == '{' {
				b.WriteString(`\$`)
			} else {
				b.WriteByte(c)
			}
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// FluxTime is t as a Flux time literal (RFC 3339, UTC, nanoseconds).
func FluxTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
