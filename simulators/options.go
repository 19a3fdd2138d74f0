package simulators

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
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
	// Faults adds field faults: spikes, stuck sensors, dropouts, malformed
	// payloads and devices going offline.
	Faults bool
	// FaultRates are the per-reading probabilities of each fault; zero
	// means DefaultFaultRates.
	FaultRates FaultRates
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
	if o.Faults && o.FaultRates == (FaultRates{}) {
		o.FaultRates = DefaultFaultRates()
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
	errs = append(errs, o.FaultRates.validate()...)
	return errors.Join(errs...)
}

// FaultRates are probabilities per reading (per published message for
// Malformed, per connected device's reading for Offline).
type FaultRates struct {
	// Spike: one numeric value jumps well outside its range for one reading.
	Spike float64
	// Stuck: the sensor repeats its last values for 20-60 intervals.
	Stuck float64
	// Dropout: the sensor sends nothing for 6-30 intervals.
	Dropout float64
	// Malformed: the message is truncated JSON.
	Malformed float64
	// Offline: the device's connection drops without a goodbye (the broker
	// publishes its last will) and stays down for 1-5 minutes.
	Offline float64
}

// DefaultFaultRates give a default fleet a fault every few seconds to minutes.
func DefaultFaultRates() FaultRates {
	return FaultRates{Spike: 0.002, Stuck: 0.0005, Dropout: 0.0005, Malformed: 0.001, Offline: 0.0002}
}

func (r FaultRates) validate() []error {
	var errs []error
	for _, f := range []struct {
		name string
		p    float64
	}{{"spike", r.Spike}, {"stuck", r.Stuck}, {"dropout", r.Dropout}, {"malformed", r.Malformed}, {"offline", r.Offline}} {
		if f.p < 0 || f.p > 1 || math.IsNaN(f.p) {
			errs = append(errs, fmt.Errorf("fault_rates.%s: must be within 0..1", f.name))
		}
	}
	return errs
}
