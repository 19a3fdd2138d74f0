package simulators

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Options configure Run. The zero value of a field means its default.
type Options struct {
	// Devices scales the fleet to this many devices; 0 keeps the file's counts.
	Devices int
	// Rate is the total readings per second; 0 keeps the per-type intervals.
	Rate float64
	// BrokerURL is the MQTT broker (tcp://host:port); default tcp://127.0.0.1:1883.
	BrokerURL string
	// APIURL and Token: when APIURL is set the fleet is provisioned through
	// the HTTP API first (Token is an admin token) and every device logs in
	// with its own secret. Without it devices log in with their id and no
	// password (an open broker, as in tests).
	APIURL, Token string
	// Faults adds field faults (see FaultRates for the kinds).
	Faults bool
	// FaultRates are the probabilities of each fault. Zero means the fleet
	// file's `faults:` section, else DefaultFaultRates.
	FaultRates FaultRates
	// MaxConnections bounds the MQTT connections the fleet opens (default
	// 1000). Site gateways always connect; when the self-connecting devices
	// do not fit, the rest are carried by multiplexers: extra devices of
	// type gateway (ids sim-mux-NNN, tag role=multiplexer) that publish
	// their readings as gateway messages, as the broker's ACL requires.
	MaxConnections int
	// MuxDevices is how many devices one multiplexer carries at most
	// (default 500).
	MuxDevices int
	// MuxInterval is how often a multiplexer publishes, in wall time
	// (default 1s, also with Speedup).
	MuxInterval time.Duration
	// Speedup runs simulated time this many times faster than the wall
	// clock (default 1): models see simulated time and readings carry it.
	// Intervals are in simulated time, so the wall rate grows by Speedup
	// too (Rate, when set, is the wall rate and is kept). Once simulated
	// time catches up with the wall clock the fleet continues live at 1x,
	// so timestamps never run ahead (ingest rejects readings more than
	// 5 minutes ahead).
	Speedup float64
	// Start is the simulated time of the first reading (default: now).
	// With Speedup it should lie in the past (e.g. now-24h) and within the
	// last 7 days, which ingest accepts.
	Start time.Time
	// Seed makes the fleet's readings reproducible.
	Seed int64
	// FleetYAML is the fleet file's content; when empty FleetFile is read.
	FleetYAML []byte
	// FleetFile is the fleet file's path; default configs/fleet.yaml.
	FleetFile string
	// Logger; default slog.Default().
	Logger *slog.Logger
	// QoS of telemetry: default 1. Set AtMostOnce for QoS 0.
	QoS byte
	// AtMostOnce publishes telemetry with QoS 0.
	AtMostOnce bool
	// PublishWorkers publish concurrently; default 32.
	PublishWorkers int
	// ConnectConcurrency bounds broker connects and goodbyes in flight; default 16.
	// (Provisioning has its own bound, ProvisionConcurrency.)
	ConnectConcurrency int
	// ProgressEvery is how often a progress line is logged; default 1 minute.
	ProgressEvery time.Duration
}

// Defaults of the multiplexing options.
const (
	DefaultMaxConnections = 1000
	DefaultMuxDevices     = 500
)

// DefaultFleetFile is where the fleet file lives in the repository.
const DefaultFleetFile = "configs/fleet.yaml"

// DefaultBrokerURL is the embedded broker's default address.
const DefaultBrokerURL = "tcp://127.0.0.1:1883"

func (o Options) withDefaults() Options {
	if o.BrokerURL == "" {
		o.BrokerURL = DefaultBrokerURL
	}
	if o.FleetFile == "" && len(o.FleetYAML) == 0 {
		o.FleetFile = DefaultFleetFile
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.QoS == 0 && !o.AtMostOnce {
		o.QoS = 1
	}
	if o.AtMostOnce {
		o.QoS = 0
	}
	if o.PublishWorkers == 0 {
		o.PublishWorkers = 32
	}
	if o.ConnectConcurrency == 0 {
		o.ConnectConcurrency = 16
	}
	if o.ProgressEvery == 0 {
		o.ProgressEvery = time.Minute
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = DefaultMaxConnections
	}
	if o.MuxDevices == 0 {
		o.MuxDevices = DefaultMuxDevices
	}
	if o.MuxInterval == 0 {
		o.MuxInterval = time.Second
	}
	if o.Speedup == 0 {
		o.Speedup = 1
	}
	return o
}

// Validate returns every configuration error, each naming its field.
func (o Options) Validate() error {
	var errs []error
	if o.Devices < 0 {
		errs = append(errs, errors.New("devices: must be >= 0"))
	}
	if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		errs = append(errs, errors.New("rate: must be a finite number >= 0"))
	}
	if u, err := url.Parse(o.BrokerURL); err != nil || u.Host == "" {
		errs = append(errs, fmt.Errorf("broker: %q is not a URL like tcp://127.0.0.1:1883", o.BrokerURL))
	} else {
		switch u.Scheme {
		case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
		default:
			errs = append(errs, fmt.Errorf("broker: unsupported scheme %q", u.Scheme))
		}
	}
	if o.APIURL != "" {
		if u, err := url.Parse(o.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("api: %q is not a URL like http://127.0.0.1:8080", o.APIURL))
		}
		if o.Token == "" {
			errs = append(errs, errors.New("token: required with api"))
		}
	}
	if o.QoS > 1 {
		errs = append(errs, errors.New("qos: must be 0 or 1"))
	}
	if o.PublishWorkers < 0 {
		errs = append(errs, errors.New("publish_workers: must be > 0"))
	}
	if o.ConnectConcurrency < 0 {
		errs = append(errs, errors.New("connect_concurrency: must be > 0"))
	}
	if o.ProgressEvery < 0 {
		errs = append(errs, errors.New("progress_every: must be > 0"))
	}
	if o.MaxConnections < 0 {
		errs = append(errs, errors.New("max_connections: must be > 0"))
	}
	if o.MuxDevices < 0 || o.MuxDevices > 5000 {
		errs = append(errs, errors.New("mux_devices: must be within 1..5000"))
	}
	if o.MuxInterval < 0 || (o.MuxInterval > 0 && o.MuxInterval < 50*time.Millisecond) {
		errs = append(errs, errors.New("mux_interval: must be >= 50ms"))
	}
	if o.Speedup < 0 || o.Speedup > 100_000 || math.IsNaN(o.Speedup) {
		errs = append(errs, errors.New("speedup: must be within 1..100000"))
	} else if o.Speedup > 0 && o.Speedup < 1 {
		errs = append(errs, errors.New("speedup: must be >= 1 (slow motion is not supported)"))
	}
	errs = append(errs, o.FaultRates.validate()...)
	return errors.Join(errs...)
}

// validateStart checks the start time against the wall clock now: ingest
// accepts readings from the last 7 days up to 5 minutes ahead.
func (o Options) validateStart(now time.Time) error {
	if o.Start.IsZero() {
		return nil
	}
	if o.Start.Before(now.Add(-7*24*time.Hour + time.Minute)) {
		return fmt.Errorf("start: %s is more than 7 days ago; ingest rejects readings older than 7 days", o.Start.Format(time.RFC3339))
	}
	if o.Speedup > 1 && o.Start.After(now) {
		return fmt.Errorf("start: %s is in the future; with speedup it must lie in the past (e.g. --start -24h) or readings run ahead of the clock", o.Start.Format(time.RFC3339))
	}
	if o.Start.After(now.Add(5 * time.Minute)) {
		return fmt.Errorf("start: %s is more than 5 minutes ahead; ingest rejects such readings", o.Start.Format(time.RFC3339))
	}
	return nil
}

// ParseStart reads a start time for --start: RFC 3339, or a duration
// relative to now ("-24h", "-90m"; "now" or "" for now).
func ParseStart(s string, now time.Time) (time.Time, error) {
	switch s {
	case "", "now":
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("start: %q is neither RFC 3339 nor a duration like -24h", s)
	}
	return t, nil
}

// FaultRates are the probabilities of the field faults --faults injects.
// Each fault is logged at INFO as "simulated fault" with kind, device_id
// and, where the system should react in a known way, expect (an ingest
// dead-letter reason, or what the registry should show).
type FaultRates struct {
	// Spike (per reading): one numeric value jumps well above or below its
	// normal range for one reading.
	Spike float64 `yaml:"spike"`
	// Stuck (per reading): the sensor repeats its last values for 20-60
	// intervals.
	Stuck float64 `yaml:"stuck"`
	// Drift (per reading): one metric drifts away from the truth by 5-30%
	// of its range per hour for 2-12 hours, then is recalibrated.
	Drift float64 `yaml:"drift"`
	// Dropout (per reading): the sensor sends nothing for 6-30 intervals.
	Dropout float64 `yaml:"dropout"`
	// Offline (per reading of a device with its own connection): the
	// connection drops without a goodbye (the broker publishes its last
	// will) and stays down for 1-5 minutes of wall time.
	Offline float64 `yaml:"offline"`
	// BackhaulLoss (per reading of a site gateway): the gateway loses its
	// uplink for 1-10 minutes of wall time; its sensors' readings are
	// buffered (bounded, oldest dropped) and sent on return, or, in a third
	// of the outages, lost when the gateway reboots.
	BackhaulLoss float64 `yaml:"backhaul_loss"`
	// ClockSkew (per reading): the device's clock runs 10 s to 20 min off for
	// 10-60 minutes; beyond 5 minutes ahead ingest rejects the readings.
	ClockSkew float64 `yaml:"clock_skew"`
	// Duplicate (per reading): the reading is sent twice.
	Duplicate float64 `yaml:"duplicate"`
	// Malformed (per message): the message is broken in one of four ways:
	// truncated or invalid JSON (malformed_json), a value sent as the
	// string "NaN" (bad_value), or a metric name that breaks the rule
	// (bad_metric).
	Malformed float64 `yaml:"malformed"`
	// Oversized (per message): an extra message over 64 KiB follows
	// (too_large), as a firmware dumping its buffer would send.
	Oversized float64 `yaml:"oversized"`
}

// DefaultFaultRates give a default fleet a fault every few seconds to minutes.
func DefaultFaultRates() FaultRates {
	return FaultRates{
		Spike: 0.002, Stuck: 0.0005, Drift: 0.0001, Dropout: 0.0005, Offline: 0.0002,
		BackhaulLoss: 0.0005, ClockSkew: 0.0001, Duplicate: 0.001, Malformed: 0.001, Oversized: 0.0002,
	}
}

// rateFields lists the rates by their config names, in a fixed order.
func (r *FaultRates) rateFields() []struct {
	name string
	p    *float64
} {
	return []struct {
		name string
		p    *float64
	}{
		{"spike", &r.Spike}, {"stuck", &r.Stuck}, {"drift", &r.Drift}, {"dropout", &r.Dropout},
		{"offline", &r.Offline}, {"backhaul_loss", &r.BackhaulLoss}, {"clock_skew", &r.ClockSkew},
		{"duplicate", &r.Duplicate}, {"malformed", &r.Malformed}, {"oversized", &r.Oversized},
	}
}

// ParseFaultRates reads "spike=0.01,drift=0.001" (for --fault-rates) on top
// of base; names are the fleet file's (snake_case).
func ParseFaultRates(s string, base FaultRates) (FaultRates, error) {
	r := base
	if strings.TrimSpace(s) == "" {
		return r, nil
	}
	fields := r.rateFields()
	for _, kv := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return base, fmt.Errorf("fault_rates: %q is not name=probability", kv)
		}
		p, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			return base, fmt.Errorf("fault_rates.%s: %q is not a number", name, val)
		}
		found := false
		for _, f := range fields {
			if f.name == strings.TrimSpace(name) {
				*f.p, found = p, true
			}
		}
		if !found {
			names := make([]string, len(fields))
			for i, f := range fields {
				names[i] = f.name
			}
			return base, fmt.Errorf("fault_rates: unknown fault %q (known: %s)", name, strings.Join(names, ", "))
		}
	}
	return r, r.validateErr()
}

func (r FaultRates) validateErr() error { return errors.Join(r.validate()...) }

func (r FaultRates) validate() []error {
	var errs []error
	for _, f := range r.rateFields() {
		if *f.p < 0 || *f.p > 1 || math.IsNaN(*f.p) {
			errs = append(errs, fmt.Errorf("fault_rates.%s: must be within 0..1", f.name))
		}
	}
	if r.Dropout+r.Stuck+r.Spike > 1 {
		errs = append(errs, errors.New("fault_rates: spike + stuck + dropout must be <= 1"))
	}
	return errs
}
