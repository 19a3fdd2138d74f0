package alerts

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Rule kinds.
const (
	KindThreshold = "threshold"
	KindAbsence   = "absence"
	KindRate      = "rate"
)

// Severities.
const (
	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// OfflineRuleID is the id of the built-in rule behind device_offline alerts,
// raised by DeviceStatus. It cannot be created, changed or deleted.
const OfflineRuleID = "device_offline"

// Limits that keep one rule from costing more than its share.
const (
	maxWebhooks   = 10
	maxNameLen    = 200
	maxMessageLen = 2000
	maxSelectorID = 1000
)

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	metricPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

// defaultMessage is used when a rule leaves its message empty.
const defaultMessage = `{{.Rule}}: {{.Metric}} = {{.Value}} on {{.DeviceID}} ({{.Site}})`

// Duration is a time.Duration that reads and writes JSON as a Go duration
// string ("5m", "90s"); a bare number is read as seconds.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d without the trailing zero units of time.Duration
// ("5m", not "5m0s").
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		*d = 0
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s == "" {
			*d = 0
			return nil
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: want e.g. \"5m\" or \"30s\"", s)
		}
		*d = Duration(v)
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("duration %s: want a string like \"5m\" or seconds", b)
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

// Selector chooses devices. Every field that is set must match; an empty
// selector matches every device.
type Selector struct {
	DeviceIDs []string          `json:"device_ids,omitempty"`
	Domain    string            `json:"domain,omitempty"`
	Type      string            `json:"type,omitempty"`
	Site      string            `json:"site,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
}

// Matches reports whether dev is selected.
func (s Selector) Matches(dev *telemetry.Device) bool {
	if dev == nil {
		return false
	}
	if len(s.DeviceIDs) > 0 {
		found := false
		for _, id := range s.DeviceIDs {
			if id == dev.ID {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if s.Domain != "" && s.Domain != dev.Domain {
		return false
	}
	if s.Type != "" && s.Type != dev.Type {
		return false
	}
	if s.Site != "" && s.Site != dev.Site {
		return false
	}
	for k, v := range s.Tags {
		if dev.Tags[k] != v {
			return false
		}
	}
	return true
}

func (s Selector) validate(prefix string, errs map[string]string) {
	if len(s.DeviceIDs) > maxSelectorID {
		errs[prefix+".device_ids"] = fmt.Sprintf("at most %d device ids", maxSelectorID)
	}
	for _, id := range s.DeviceIDs {
		if !idPattern.MatchString(id) {
			errs[prefix+".device_ids"] = fmt.Sprintf("device id %q does not match %s", id, idPattern)
			break
		}
	}
	for k := range s.Tags {
		if k == "" {
			errs[prefix+".tags"] = "tag names must not be empty"
		}
	}
}

// Notify says whom a rule notifies besides the websocket stream.
type Notify struct {
	Webhooks []string `json:"webhooks,omitempty"` // URLs that receive a signed JSON POST
	MQTT     bool     `json:"mqtt,omitempty"`     // publish on alerts/<site>/<device_id>
}

// Rule is an alert rule as operators write it and as it is persisted.
type Rule struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	Enabled  bool     `json:"enabled"`
	Selector Selector `json:"selector"`
	// Metric is the metric the rule reads; an absence rule may leave it
	// empty to mean "no reading of any metric".
	Metric string `json:"metric"`
	Kind   string `json:"kind"`
	// Op compares the value (threshold) or the change per minute (rate)
	// with Value: >, >=, < or <=. A rate rule without an op compares the
	// absolute change per minute: |rate| > value.
	Op    string  `json:"op,omitempty"`
	Value float64 `json:"value"`
	// ClearValue is where an open alert resolves (hysteresis). With op >
	// or >= the alert resolves once the value is <= / < ClearValue, with
	// op < or <= once it is >= / > ClearValue. Absent, it is Value.
	ClearValue *float64 `json:"clear_value,omitempty"`
	// For is how long the condition must hold before the alert fires; for
	// absence, how long without a reading.
	For Duration `json:"for"`
	// ReackAfter re-notifies an acknowledged alert that is still open after
	// this long (and again every ReackAfter); zero never does.
	ReackAfter Duration `json:"reack_after"`
	Severity   string   `json:"severity"`
	// Message is a text/template over {{.DeviceID}} {{.Site}} {{.Metric}}
	// {{.Value}} {{.Rule}} {{.Threshold}}.
	Message string `json:"message"`
	Notify  Notify `json:"notify"`
}

// ValidationError lists every invalid field of a rule or silence, keyed by
// its JSON path (e.g. "selector.device_ids").
type ValidationError struct {
	Fields map[string]string
}

func (e *ValidationError) Error() string {
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+": "+e.Fields[k])
	}
	return "invalid: " + strings.Join(parts, "; ")
}

// withDefaults fills the defaults a rule gets when fields are left out.
func (r Rule) withDefaults() Rule {
	if r.Severity == "" {
		r.Severity = SeverityWarning
	}
	return r
}

func isOp(op string) bool {
	switch op {
	case ">", ">=", "<", "<=":
		return true
	}
	return false
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// Validate checks every field and returns a *ValidationError naming each bad
// one, or nil.
func (r Rule) Validate() error {
	errs := map[string]string{}
	if r.ID != "" && !idPattern.MatchString(r.ID) {
		errs["id"] = "must match " + idPattern.String()
	}
	if r.ID == OfflineRuleID {
		errs["id"] = OfflineRuleID + " is reserved for the built-in offline rule"
	}
	if strings.TrimSpace(r.Name) == "" {
		errs["name"] = "required"
	} else if len(r.Name) > maxNameLen {
		errs["name"] = fmt.Sprintf("at most %d characters", maxNameLen)
	}
	r.Selector.validate("selector", errs)
	switch r.Kind {
	case KindThreshold, KindRate:
		if r.Metric == "" {
			errs["metric"] = "required for kind " + r.Kind
		}
	case KindAbsence:
		if r.For <= 0 {
			errs["for"] = "absence needs a positive duration"
		}
	case "":
		errs["kind"] = "required: threshold, absence or rate"
	default:
		errs["kind"] = fmt.Sprintf("%q is not threshold, absence or rate", r.Kind)
	}
	if r.Metric != "" && !metricPattern.MatchString(r.Metric) {
		errs["metric"] = "must match " + metricPattern.String()
	}
	switch {
	case r.Kind == KindThreshold && !isOp(r.Op):
		errs["op"] = "threshold needs one of >, >=, <, <="
	case r.Kind == KindRate && r.Op != "" && !isOp(r.Op):
		errs["op"] = "must be empty or one of >, >=, <, <="
	}
	if !finite(r.Value) {
		errs["value"] = "must be a finite number"
	}
	if r.Kind == KindRate && r.Op == "" && r.Value < 0 {
		errs["value"] = "an absolute rate (no op) must be >= 0"
	}
	if r.ClearValue != nil {
		c := *r.ClearValue
		op := r.Op
		if r.Kind == KindRate && op == "" {
			op = ">"
		}
		switch {
		case r.Kind == KindAbsence:
			errs["clear_value"] = "not used by absence rules"
		case !finite(c):
			errs["clear_value"] = "must be a finite number"
		case (op == ">" || op == ">=") && c > r.Value:
			errs["clear_value"] = "must be <= value when op is > or >="
		case (op == "<" || op == "<=") && c < r.Value:
			errs["clear_value"] = "must be >= value when op is < or <="
		}
	}
	if r.For < 0 {
		errs["for"] = "must not be negative"
	}
	if r.ReackAfter < 0 {
		errs["reack_after"] = "must not be negative"
	} else if r.ReackAfter > 0 && r.ReackAfter.D() < time.Minute {
		errs["reack_after"] = "must be zero or at least 1m"
	}
	switch r.Severity {
	case SeverityInfo, SeverityWarning, SeverityCritical:
	default:
		errs["severity"] = "must be info, warning or critical"
	}
	if len(r.Message) > maxMessageLen {
		errs["message"] = fmt.Sprintf("at most %d characters", maxMessageLen)
	} else if _, err := parseMessage(r.Message); err != nil {
		errs["message"] = err.Error()
	}
	if len(r.Notify.Webhooks) > maxWebhooks {
		errs["notify.webhooks"] = fmt.Sprintf("at most %d webhooks", maxWebhooks)
	}
	for _, raw := range r.Notify.Webhooks {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs["notify.webhooks"] = fmt.Sprintf("%q is not an http(s) URL", raw)
			break
		}
	}
	if len(errs) > 0 {
		return &ValidationError{Fields: errs}
	}
	return nil
}

func parseMessage(s string) (*template.Template, error) {
	if s == "" {
		s = defaultMessage
	}
	t, err := template.New("message").Option("missingkey=zero").Parse(s)
	if err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	return t, nil
}

// messageData is what a message template sees.
type messageData struct {
	DeviceID  string
	Site      string
	Metric    string
	Value     float64
	Rule      string
	Threshold float64
}

// compiled is a validated rule with what evaluation needs precomputed.
type compiled struct {
	Rule
	tmpl  *template.Template
	op    string  // effective op (rate without op: ">" on |rate|)
	abs   bool    // rate compares |rate|
	clear float64 // effective clear value
}

func compile(r Rule) (*compiled, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return compileTrusted(r)
}

// compileTrusted compiles a rule that is known to be valid (built-in, or
// already validated).
func compileTrusted(r Rule) (*compiled, error) {
	t, err := parseMessage(r.Message)
	if err != nil {
		return nil, err
	}
	c := &compiled{Rule: r, tmpl: t, op: r.Op, clear: r.Value}
	if r.Kind == KindRate && r.Op == "" {
		c.op, c.abs = ">", true
	}
	if r.ClearValue != nil {
		c.clear = *r.ClearValue
	}
	return c, nil
}

// bad reports whether v violates the rule (the firing condition).
func (c *compiled) bad(v float64) bool {
	if c.abs {
		v = math.Abs(v)
	}
	switch c.op {
	case ">":
		return v > c.Value
	case ">=":
		return v >= c.Value
	case "<":
		return v < c.Value
	case "<=":
		return v <= c.Value
	}
	return false
}

// cleared reports whether v is on the clear side of the clear value: the
// negation of the op applied at ClearValue. With ClearValue == Value it is
// exactly !bad(v); with hysteresis there is a band where neither holds and
// an open alert stays open while a closed one stays closed.
func (c *compiled) cleared(v float64) bool {
	if c.abs {
		v = math.Abs(v)
	}
	switch c.op {
	case ">":
		return v <= c.clear
	case ">=":
		return v < c.clear
	case "<":
		return v >= c.clear
	case "<=":
		return v > c.clear
	}
	return true
}

func (c *compiled) message(dev *telemetry.Device, deviceID, metric string, v float64) string {
	var b strings.Builder
	d := messageData{DeviceID: deviceID, Metric: metric, Value: v, Rule: c.Name, Threshold: c.Value}
	if dev != nil {
		d.Site = dev.Site
	}
	if err := c.tmpl.Execute(&b, d); err != nil {
		return c.Name + ": " + err.Error()
	}
	return b.String()
}
