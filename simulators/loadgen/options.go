package loadgen

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
)

// Defaults of Options.
const (
	DefaultDevices  = 100
	DefaultRate     = 5000
	DefaultDuration = 20 * time.Second
	DefaultQoS      = 1
	DefaultDB       = "infrawatch"
	// DefaultDrainTimeout bounds the wait for the system to store what it
	// acknowledged after publishing stops.
	DefaultDrainTimeout = 2 * time.Minute
	// MaxDevices bounds the connections one run opens.
	MaxDevices = 2000
	// MaxRate bounds the offered rate, readings per second.
	MaxRate = 1_000_000
	// MaxWSClients bounds the websocket clients one run opens.
	MaxWSClients = 10000
	// MaxDuration bounds one run's publishing phase.
	MaxDuration = time.Hour
)

// What the websocket clients subscribe to (Options.WSSubscribe).
const (
	WSAll  = "all"
	WSSite = "site"
	// WSSiteDevices is the size of a "site" that a WSSite client watches.
	// The bench devices are all provisioned into one site (DeviceSite), so
	// a client's site is a slice of the fleet named by device ids:
	// client i watches slice i mod (devices / WSSiteDevices).
	WSSiteDevices = 10
)

// Measurement and tags of the bench readings: the InfluxDB measurement is
// the device type.
const (
	DeviceType   = "bench_counter"
	DeviceDomain = "roads"
	DeviceSite   = "s1"
)

// Options configures one bench run against a running system.
type Options struct {
	// APIURL is the infrawatch HTTP API, e.g. http://127.0.0.1:8080; its
	// /metrics is read for the ingest counters and lag histogram.
	APIURL string
	// Token is an admin API token, used to provision the bench devices.
	Token string
	// BrokerURL is the MQTT broker devices publish to, tcp://host:port.
	BrokerURL string
	// InfluxURL and DB say where stored readings are counted (the
	// database, or bucket, infrawatch writes to). InfluxToken is sent as
	// "Token ..." when set (InfluxDB 2.x, or user:password for 1.8).
	InfluxURL   string
	DB          string
	InfluxToken string
	InfluxOrg   string

	// Devices is the number of devices, each on its own MQTT connection
	// with its own credentials (the broker lets a device publish only
	// under devices/<its id>/, so a connection cannot carry others).
	Devices int
	// Rate is the total readings per second offered, spread evenly over
	// the devices. One reading per message.
	Rate float64
	// Duration is how long readings are published.
	Duration time.Duration
	// QoS is 0 or 1.
	QoS byte
	// DrainTimeout bounds the wait for stored readings to stop increasing.
	DrainTimeout time.Duration
	// RunID makes the device ids of this run unique (bench-<RunID>-<n>), so
	// runs against one system do not mix. Random when empty.
	RunID string

	// Direct says no infrawatch is in the path (Telegraf): devices are
	// not provisioned and connect without credentials, the drain is
	// watched in InfluxDB's write statistics instead of infrawatch's
	// /metrics, and the publish → stored lag is not known.
	Direct bool
	// NoRules skips the bench's alert rules (benchRules), e.g. to compare
	// with a build that did not create them.
	NoRules bool
	// CountField is the field counted in InfluxDB, which every reading
	// carries once; countField when empty (Telegraf flattens the nested
	// "values" object, so it stores "values_" + countField).
	CountField string
	// WSClients websocket clients are connected to /api/v1/stream during
	// the run, subscribed in batch mode as the dashboard page is, and
	// publish → websocket latency is measured (not with Direct).
	WSClients int
	// WSSubscribe is what each websocket client subscribes to: WSAll (the
	// readings of every device, the worst case; the default) or WSSite
	// (the readings of one site's devices, WSSiteDevices of them, as an
	// operations dashboard watches its site).
	WSSubscribe string
	// Publisher is the load generator's MQTT client: PublisherRaw (the
	// default when empty: packets written straight to the socket, cheap
	// enough that the system under test, not the load generator, limits
	// the rate on a small machine) or PublisherPaho.
	Publisher string

	// Procs are the processes whose CPU time and memory are reported
	// (name → pid), e.g. "infrawatch" and "influxd". The load generator
	// itself is always measured, as "loadgen".
	Procs map[string]int
	// Logger receives progress; discarded when nil.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Devices == 0 {
		o.Devices = DefaultDevices
	}
	if o.Rate == 0 {
		o.Rate = DefaultRate
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.DB == "" {
		o.DB = DefaultDB
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.WSSubscribe == "" {
		o.WSSubscribe = WSAll
	}
	if o.CountField == "" {
		o.CountField = countField
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.APIURL = strings.TrimRight(o.APIURL, "/")
	o.InfluxURL = strings.TrimRight(o.InfluxURL, "/")
	return o
}

// Validate reports every bad option, each naming its field.
func (o Options) Validate() error {
	var errs []error
	checkURL := func(field, v string, schemes ...string) {
		u, err := url.Parse(v)
		if v == "" || err != nil || u.Host == "" || !contains(schemes, u.Scheme) {
			errs = append(errs, fmt.Errorf("%s: %q is not a %s URL", field, v, strings.Join(schemes, "/")))
		}
	}
	if !o.Direct {
		checkURL("api_url", o.APIURL, "http", "https")
		if o.Token == "" {
			errs = append(errs, errors.New("token: an admin API token is needed to provision the bench devices"))
		}
	}
	checkURL("broker_url", o.BrokerURL, "tcp", "mqtt")
	checkURL("influx_url", o.InfluxURL, "http", "https")
	if o.WSClients < 0 || o.WSClients > MaxWSClients {
		errs = append(errs, fmt.Errorf("ws_clients: %d is not in 0..%d", o.WSClients, MaxWSClients))
	}
	if o.WSSubscribe != "" && o.WSSubscribe != WSAll && o.WSSubscribe != WSSite {
		errs = append(errs, fmt.Errorf("ws_subscribe: %q is not %s or %s", o.WSSubscribe, WSAll, WSSite))
	}
	if o.Publisher != "" && o.Publisher != PublisherRaw && o.Publisher != PublisherPaho {
		errs = append(errs, fmt.Errorf("publisher: %q is not %s or %s", o.Publisher, PublisherRaw, PublisherPaho))
	}
	if o.WSClients > 0 && o.Direct {
		errs = append(errs, errors.New("ws_clients: needs infrawatch's stream; Direct (Telegraf) has none"))
	}
	if o.Devices < 1 || o.Devices > MaxDevices {
		errs = append(errs, fmt.Errorf("devices: %d is not in 1..%d", o.Devices, MaxDevices))
	}
	if !(o.Rate > 0 && o.Rate <= MaxRate) {
		errs = append(errs, fmt.Errorf("rate: %g is not in (0, %d]", o.Rate, MaxRate))
	}
	if o.Duration < 100*time.Millisecond || o.Duration > MaxDuration {
		errs = append(errs, fmt.Errorf("duration: %s is not in 100ms..%s", o.Duration, MaxDuration))
	}
	if o.QoS > 1 {
		errs = append(errs, fmt.Errorf("qos: %d is not 0 or 1", o.QoS))
	}
	if o.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("drain_timeout: %s is negative", o.DrainTimeout))
	}
	if o.RunID != "" && !validRunID(o.RunID) {
		errs = append(errs, fmt.Errorf("run_id: %q: want 1-16 of [a-z0-9]", o.RunID))
	}
	if o.DB == "" {
		errs = append(errs, errors.New("db: empty"))
	}
	return errors.Join(errs...)
}

func validRunID(s string) bool {
	if len(s) > 16 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return len(s) > 0
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
