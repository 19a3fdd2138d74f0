package devices

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/infrawatch/infrawatch/telemetry"
)

// DefaultExpectedInterval is the expected time between readings, in seconds,
// given to a device whose create or update leaves it at zero.
const DefaultExpectedInterval = 60

// Bounds on what one device may carry, so that one bad request cannot bloat
// the registry or InfluxDB tags.
const (
	MaxNameLen          = 256
	MaxMetrics          = 256
	MaxTags             = 64
	MaxTagKeyLen        = 64
	MaxTagValueLen      = 256
	MaxUnitLen          = 32
	MinSecretLen        = 16
	MaxSecretLen        = 256
	MaxExpectedInterval = 7 * 24 * 3600 // a week, in seconds
)

var (
	// ErrNotFound is returned for a device id that is not in the registry.
	ErrNotFound = errors.New("device not found")
	// ErrExists is returned when creating a device whose id is taken.
	ErrExists = errors.New("device already exists")
)

// Location is where a device stands, in WGS 84 degrees.
type Location struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
}

// MetricSpec describes one metric a device reports: its unit and normal
// range (either bound may be absent).
type MetricSpec struct {
	Unit string   `json:"unit,omitempty"`
	Min  *float64 `json:"min,omitempty"`
	Max  *float64 `json:"max,omitempty"`
}

// Device is a registered device in the form the API reads and writes.
//
// Secret is write-only: it is accepted on create and update and appears in a
// result only in the answer of the create (or secret-rotating update) that set
// it; the registry keeps only a salted hash.
type Device struct {
	ID               string                `json:"id"`
	Name             string                `json:"name"`
	Domain           string                `json:"domain"`
	Type             string                `json:"type"`
	Site             string                `json:"site"`
	Location         *Location             `json:"location,omitempty"`
	ExpectedInterval int                   `json:"expected_interval"` // seconds
	Metrics          map[string]MetricSpec `json:"metrics,omitempty"`
	Tags             map[string]string     `json:"tags,omitempty"`
	GatewayID        string                `json:"gateway_id,omitempty"`
	Lifecycle        string                `json:"lifecycle"`
	Secret           string                `json:"secret,omitempty"`
	CreatedAt        time.Time             `json:"created_at"`
	UpdatedAt        time.Time             `json:"updated_at"`
}

// Filter selects devices in List; an empty field matches every device.
type Filter struct {
	Domain string
	Site   string
	Type   string
}

// Match reports whether d passes the filter.
func (f Filter) Match(d *Device) bool {
	return (f.Domain == "" || f.Domain == d.Domain) &&
		(f.Site == "" || f.Site == d.Site) &&
		(f.Type == "" || f.Type == d.Type)
}

// matchTel is Match on the registry's hot-path view of a device.
func (f Filter) matchTel(d *telemetry.Device) bool {
	return (f.Domain == "" || f.Domain == d.Domain) &&
		(f.Site == "" || f.Site == d.Site) &&
		(f.Type == "" || f.Type == d.Type)
}

// ValidationError lists every invalid field of a device, keyed by its JSON
// name (nested as "location.lat", "metrics.<name>", "tags.<key>").
type ValidationError struct {
	Fields map[string]string
}

// Error lists the invalid fields, sorted by name.
func (e *ValidationError) Error() string {
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ": " + e.Fields[k]
	}
	return "invalid device: " + strings.Join(parts, "; ")
}

var (
	// metricRE is the metric (InfluxDB field) name rule from the SPEC.
	metricRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	// typeRE: the type is the InfluxDB measurement, so keep it to an
	// identifier that needs no escaping anywhere.
	typeRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	// labelRE for domain and site: InfluxDB tags and MQTT topic levels
	// (alerts/<site>/<device_id>), so no wildcards, slashes or spaces.
	labelRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
)

// reservedIDs are MQTT usernames with another meaning ("token" is how people
// log in with an API token, "infrawatch" is the service's own client).
var reservedIDs = []string{"infrawatch", "token"}

// ValidID reports whether id is a well-formed device or gateway id.
func ValidID(id string) bool { return telemetry.ValidID(id) }

// ValidMetricName reports whether name is a well-formed metric name.
func ValidMetricName(name string) bool { return metricRE.MatchString(name) }

// normalize fills defaults into d in place.
func normalize(d *Device) {
	if d.ExpectedInterval == 0 {
		d.ExpectedInterval = DefaultExpectedInterval
	}
	if d.Lifecycle == "" {
		d.Lifecycle = telemetry.LifecycleActive
	}
	if d.Name == "" {
		d.Name = d.ID
	}
}

// validate checks a normalized device and returns a *ValidationError naming
// every bad field, or nil.
func validate(d *Device) error {
	bad := map[string]string{}
	switch {
	case !telemetry.ValidID(d.ID):
		bad["id"] = "must match ^[A-Za-z0-9_-]{1,64}$"
	default:
		for _, r := range reservedIDs {
			if strings.EqualFold(d.ID, r) {
				bad["id"] = fmt.Sprintf("%q is reserved", d.ID)
			}
		}
	}
	if msg := checkText(d.Name, MaxNameLen); msg != "" {
		bad["name"] = msg
	}
	if !labelRE.MatchString(d.Domain) {
		bad["domain"] = "must be 1-64 of a-z, 0-9, _ and -"
	}
	if !typeRE.MatchString(d.Type) {
		bad["type"] = "must match ^[a-z][a-z0-9_]{0,63}$ (it is the InfluxDB measurement)"
	}
	if !labelRE.MatchString(d.Site) {
		bad["site"] = "must be 1-64 of a-z, 0-9, _ and -"
	}
	if l := d.Location; l != nil {
		if math.IsNaN(l.Lat) || l.Lat < -90 || l.Lat > 90 {
			bad["location.lat"] = "must be between -90 and 90"
		}
		if math.IsNaN(l.Lon) || l.Lon < -180 || l.Lon > 180 {
			bad["location.lon"] = "must be between -180 and 180"
		}
	}
	if d.ExpectedInterval <= 0 || d.ExpectedInterval > MaxExpectedInterval {
		bad["expected_interval"] = fmt.Sprintf("must be 1 to %d seconds", MaxExpectedInterval)
	}
	if len(d.Metrics) > MaxMetrics {
		bad["metrics"] = fmt.Sprintf("at most %d metrics", MaxMetrics)
	}
	for name, m := range d.Metrics {
		key := "metrics." + name
		switch {
		case !metricRE.MatchString(name):
			bad[key] = "name must match ^[a-z][a-z0-9_]{0,63}$"
		case checkText(m.Unit, MaxUnitLen) != "":
			bad[key] = "unit: " + checkText(m.Unit, MaxUnitLen)
		case m.Min != nil && !finite(*m.Min), m.Max != nil && !finite(*m.Max):
			bad[key] = "min and max must be finite numbers"
		case m.Min != nil && m.Max != nil && *m.Min > *m.Max:
			bad[key] = "min must not exceed max"
		}
	}
	if len(d.Tags) > MaxTags {
		bad["tags"] = fmt.Sprintf("at most %d tags", MaxTags)
	}
	for k, v := range d.Tags {
		if k == "" {
			bad["tags"] = "tag keys must not be empty"
			continue
		}
		if msg := checkText(k, MaxTagKeyLen); msg != "" {
			bad["tags."+k] = "key " + msg
		} else if msg := checkText(v, MaxTagValueLen); msg != "" {
			bad["tags."+k] = "value " + msg
		}
	}
	if d.GatewayID != "" {
		if !telemetry.ValidID(d.GatewayID) {
			bad["gateway_id"] = "must match ^[A-Za-z0-9_-]{1,64}$"
		} else if d.GatewayID == d.ID {
			bad["gateway_id"] = "a device cannot be its own gateway"
		}
	}
	switch d.Lifecycle {
	case telemetry.LifecycleActive, telemetry.LifecycleMaintenance, telemetry.LifecycleRetired:
	default:
		bad["lifecycle"] = "must be active, maintenance or retired"
	}
	if d.Secret != "" {
		if n := len(d.Secret); n < MinSecretLen || n > MaxSecretLen {
			bad["secret"] = fmt.Sprintf("must be %d to %d bytes", MinSecretLen, MaxSecretLen)
		} else if msg := checkText(d.Secret, MaxSecretLen); msg != "" {
			bad["secret"] = msg
		}
	}
	if len(bad) > 0 {
		return &ValidationError{Fields: bad}
	}
	return nil
}

// checkText returns why s is not acceptable free text (valid UTF-8, no control
// characters such as newlines, at most max bytes), or "".
func checkText(s string, max int) string {
	if len(s) > max {
		return fmt.Sprintf("must be at most %d bytes", max)
	}
	if !utf8.ValidString(s) {
		return "must be valid UTF-8"
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return "must not contain control characters"
		}
	}
	return ""
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// clone returns a deep copy of d, so callers can never reach the registry's
// published (immutable) values.
func (d Device) clone() Device {
	if d.Location != nil {
		l := *d.Location
		d.Location = &l
	}
	if d.Metrics != nil {
		m := make(map[string]MetricSpec, len(d.Metrics))
		for k, v := range d.Metrics {
			if v.Min != nil {
				x := *v.Min
				v.Min = &x
			}
			if v.Max != nil {
				x := *v.Max
				v.Max = &x
			}
			m[k] = v
		}
		d.Metrics = m
	}
	d.Tags = maps.Clone(d.Tags)
	return d
}
