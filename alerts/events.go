package alerts

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// EventWriter writes line protocol to InfluxDB (the store package's writer
// satisfies it): lines is newline-separated, n the number of lines.
type EventWriter interface {
	WriteLines(ctx context.Context, lines []byte, n int) error
}

// EventMeasurement is where alert transitions go, beside the data.
const EventMeasurement = "alert_events"

var (
	// In tag keys and values, commas, equals signs and spaces are escaped.
	tagEscaper = strings.NewReplacer(",", `\,`, "=", `\=`, " ", `\ `, "\n", `\ `, "\r", `\ `)
	// In string field values, double quotes and backslashes are escaped.
	fieldEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
)

// eventLine renders one alert transition as a line of the alert_events
// measurement: tags rule_id, device_id, site, severity, state (sorted, empty
// ones left out, which line protocol requires); fields value (when finite),
// alert_id and transition as strings; the transition's time in ns.
func eventLine(b []byte, a *Alert, transition string, at time.Time) []byte {
	b = append(b, EventMeasurement...)
	tag := func(k, v string) {
		if v == "" {
			return
		}
		b = append(b, ',')
		b = append(b, k...)
		b = append(b, '=')
		v = tagEscaper.Replace(v)
		// A trailing backslash would escape the separator that follows.
		if strings.HasSuffix(v, `\`) && !strings.HasSuffix(v, `\ `) {
			v += "_"
		}
		b = append(b, v...)
	}
	tag("device_id", a.DeviceID)
	tag("rule_id", a.RuleID)
	tag("severity", a.Severity)
	tag("site", a.Site)
	tag("state", a.State.String())
	b = append(b, ' ')
	if finite(a.Value) {
		b = append(b, "value="...)
		b = strconv.AppendFloat(b, a.Value, 'g', -1, 64)
		b = append(b, ',')
	}
	b = append(b, `alert_id="`...)
	b = append(b, fieldEscaper.Replace(a.ID)...)
	b = append(b, `",transition="`...)
	b = append(b, fieldEscaper.Replace(transition)...)
	b = append(b, '"', ' ')
	b = strconv.AppendInt(b, at.UnixNano(), 10)
	b = append(b, '\n')
	return b
}
