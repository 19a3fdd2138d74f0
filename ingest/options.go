package ingest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

// Writer stores one batch of line protocol in one attempt (store.Store
// implements it). lines must not be retained after it returns.
type Writer interface {
	WriteLines(ctx context.Context, lines []byte, points int) error
}

// StatusSink receives devices' online/offline messages (their MQTT last
// will and birth message).
type StatusSink interface {
	DeviceStatus(id string, online bool, at time.Time)
}

// LocalBroker is an in-process MQTT broker ingest is embedded in
// (Options.Local): messages arrive through Ingester.Deliver and dead
// letters leave through Publish.
type LocalBroker interface {
	// Publish publishes payload to topic at QoS 1, not retained, in
	// process.
	Publish(topic string, payload []byte) error
}

// Defaults for Options.
const (
	DefaultClientID        = "infrawatch-ingest"
	DefaultKeepAlive       = 30 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultMaxPayloadBytes = 64 << 10
	DefaultMaxReadings     = 1000
	DefaultMaxAge          = 7 * 24 * time.Hour
	DefaultMaxFuture       = 5 * time.Minute
	DefaultBatchSize       = 5000
	DefaultFlushInterval   = 100 * time.Millisecond
	DefaultQueueSize       = 20000
	DefaultWorkers         = 2
	// DefaultWriteConcurrency is how many batches are written to InfluxDB
	// at once.
	DefaultWriteConcurrency = 3
	DefaultDeviceRateLimit  = 10
	DefaultDeviceBurst      = 100
	DefaultWriteTimeout     = 10 * time.Second
	DefaultShutdownTimeout  = 10 * time.Second
	DefaultDeadLetterQueue  = 1024
	// DefaultDeadLetterStoreSize and DefaultDeadLetterStoreBytes bound the
	// dead letters kept in memory for listing and replay.
	DefaultDeadLetterStoreSize  = 10000
	DefaultDeadLetterStoreBytes = 64 << 20
	// DefaultSpoolMaxBytes bounds the disk spool.
	DefaultSpoolMaxBytes = 1 << 30
	// MinSpoolMaxBytes is the least SpoolMaxBytes: a batch must fit.
	MinSpoolMaxBytes = 1 << 20
)

// Options configure an Ingester. Zero values take the defaults above.
type Options struct {
	// BrokerURL is the MQTT broker, e.g. tcp://127.0.0.1:1883. Required
	// unless Local is set.
	BrokerURL string
	// Local, when set, embeds ingest in an in-process broker instead of
	// connecting to one: the broker calls Deliver for each message (and
	// sends a QoS 1 PUBACK only when Deliver's ack is called, once the
	// readings are stored or spooled), and dead letters are published
	// through Local. No MQTT connection is made; BrokerURL, ClientID,
	// the credentials, TLSConfig, SharedGroup, KeepAlive and
	// ConnectTimeout are then unused.
	Local LocalBroker
	// ClientID is fixed so that the broker keeps the persistent session
	// (and queues QoS 1 messages) while ingest restarts. Each instance of a
	// shared group needs its own. Default "infrawatch-ingest".
	ClientID string
	// Username and Password log in to the broker.
	Username, Password string
	// TLSConfig is used for ssl://, tls://, mqtts:// and wss:// brokers;
	// nil means the system roots and the URL's host name.
	TLSConfig *tls.Config
	// SharedGroup, when set, subscribes to the telemetry topics as
	// $share/<group>/... so that several instances split the load. Status
	// topics stay unshared: every instance sees every status.
	SharedGroup string
	// KeepAlive is the MQTT keepalive; ConnectTimeout bounds one connect
	// attempt (reconnects go on until Run ends).
	KeepAlive, ConnectTimeout time.Duration

	// Lookup finds a device in the registry. It must not block (the
	// registry publishes immutable snapshots). The rate limiter counts per
	// telemetry.Device.Slot, so devices registered at the same time must
	// have different slots, as the registry's have. Required.
	Lookup func(id string) (*telemetry.Device, bool)
	// AutoRegister, when set, registers a device first seen on its own
	// telemetry topic instead of rejecting it as unknown_device.
	AutoRegister func(ctx context.Context, id string) (*telemetry.Device, error)

	// Writer stores batches. Required.
	Writer Writer
	// IsRetryable tells a write error worth retrying (the batch is kept
	// and retried while Run lasts) from one that never will succeed (the
	// batch is dropped and dead-lettered). Default: store.ErrRetryable,
	// and also store.ErrUnauthorized and store.ErrNotFound (see
	// writeMayLater).
	IsRetryable func(error) bool
	// RetryDelay is the wait before retry attempt (0 for the first).
	// Default store.RetryDelay (exponential with jitter, honouring
	// Retry-After).
	RetryDelay func(err error, attempt int) time.Duration
	// WriteTimeout bounds one write attempt. Default 10s.
	WriteTimeout time.Duration
	// ShutdownTimeout bounds the final flush when Run ends. Default 10s.
	ShutdownTimeout time.Duration

	// Consumers receive each message's accepted readings as soon as they
	// are decoded, before they are stored (live state, alerts, stream).
	Consumers []telemetry.Consumer
	// Status receives devices/<id>/status messages; nil ignores them.
	Status StatusSink

	// MaxPayloadBytes (64 KiB) and MaxReadings (1000) bound one message;
	// MaxAge (7 days) and MaxFuture (5 minutes) bound a reading's ts.
	MaxPayloadBytes, MaxReadings int
	MaxAge, MaxFuture            time.Duration

	// BatchSize (5000 points) and FlushInterval (100ms) decide when a
	// batch is written: whichever comes first.
	BatchSize     int
	FlushInterval time.Duration
	// QueueSize bounds the messages between the MQTT client and the
	// writer (half waiting to be decoded, half decoded and waiting to be
	// written). When it is full ingest stops reading from the broker.
	QueueSize int
	// WriteConcurrency is how many batches may be in flight to InfluxDB at
	// once (default 3). One batch at a time leaves InfluxDB idle while a
	// response travels back and the next batch is sent; each message is
	// still acknowledged only once its own batch is stored or spooled.
	WriteConcurrency int
	// Workers is the number of decoding goroutines. Messages are
	// assigned by device (gateway) id, so one device's readings reach the
	// consumers in order. Default 2.
	Workers int
	// DeadLetterQueue bounds the dead letters waiting to be published;
	// beyond it they are dropped and counted. Default 1024.
	DeadLetterQueue int
	// DeadLetterStoreSize (10000) and DeadLetterStoreBytes (64 MiB) bound
	// the dead letters kept in memory, for GET /api/v1/deadletters and
	// replay; beyond either the oldest are forgotten (they were published
	// to infrawatch/deadletter/<reason> too).
	DeadLetterStoreSize, DeadLetterStoreBytes int

	// SpoolDir, when set, is where batches go while InfluxDB cannot take
	// them: a message is acknowledged once its readings are written there
	// and fsynced, and the spool is replayed, oldest first, when InfluxDB
	// is back (while live data keeps flowing). Empty: no spool; a failing
	// batch is retried and its messages stay unacknowledged.
	SpoolDir string
	// SpoolMaxBytes bounds the spool (default 1 GiB, at least 1 MiB). When
	// it is full ingest stops acknowledging: the broker holds the messages.
	SpoolMaxBytes int64

	// DeviceRateLimit is how many times faster than its expected rate
	// (1/interval; 1/s when the interval is unknown) a device may publish
	// messages before they are rejected as rate_limited; DeviceBurst is
	// the bucket size. Default 10 and 100; a negative limit turns the
	// check off.
	DeviceRateLimit float64
	DeviceBurst     int

	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
}

func (o *Options) setDefaults() {
	setDefault(&o.ClientID, DefaultClientID)
	setDefault(&o.KeepAlive, DefaultKeepAlive)
	setDefault(&o.ConnectTimeout, DefaultConnectTimeout)
	setDefault(&o.MaxPayloadBytes, DefaultMaxPayloadBytes)
	setDefault(&o.MaxReadings, DefaultMaxReadings)
	setDefault(&o.MaxAge, DefaultMaxAge)
	setDefault(&o.MaxFuture, DefaultMaxFuture)
	setDefault(&o.BatchSize, DefaultBatchSize)
	setDefault(&o.FlushInterval, DefaultFlushInterval)
	setDefault(&o.QueueSize, DefaultQueueSize)
	setDefault(&o.Workers, DefaultWorkers)
	setDefault(&o.WriteConcurrency, DefaultWriteConcurrency)
	setDefault(&o.DeadLetterQueue, DefaultDeadLetterQueue)
	setDefault(&o.DeadLetterStoreSize, DefaultDeadLetterStoreSize)
	setDefault(&o.DeadLetterStoreBytes, DefaultDeadLetterStoreBytes)
	setDefault(&o.SpoolMaxBytes, DefaultSpoolMaxBytes)
	setDefault(&o.DeviceRateLimit, DefaultDeviceRateLimit)
	setDefault(&o.DeviceBurst, DefaultDeviceBurst)
	setDefault(&o.WriteTimeout, DefaultWriteTimeout)
	setDefault(&o.ShutdownTimeout, DefaultShutdownTimeout)
	if o.IsRetryable == nil {
		o.IsRetryable = writeMayLater
	}
	if o.RetryDelay == nil {
		o.RetryDelay = store.RetryDelay
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// writeMayLater reports whether a failed write may succeed later
// unchanged. Besides the store's retryable errors, a 401/403 (a token
// revoked or rotated) or a 404 (the database dropped, or not created yet)
// says nothing about the readings: it lasts until an operator fixes the
// server, and then the same batch is taken. Dropping the batch instead
// acknowledged readings that were never stored.
func writeMayLater(err error) bool {
	return errors.Is(err, store.ErrRetryable) || errors.Is(err, store.ErrUnauthorized) || errors.Is(err, store.ErrNotFound)
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// Validate returns every configuration error, each naming its field. It
// expects the defaults to be filled in (New does that first).
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("ingest: "+format, args...)) }
	if o.Local != nil {
		// In process: no URL to check.
	} else if o.BrokerURL == "" {
		bad("BrokerURL is required")
	} else if u, err := url.Parse(o.BrokerURL); err != nil || u.Host == "" || !(sessionDialer{}).dialable(u.Scheme) {
		bad("BrokerURL %q must be tcp://, ssl://, ws:// or wss:// with a host", o.BrokerURL)
	}
	if !telemetry.ValidID(o.ClientID) {
		bad("ClientID %q must match ^[A-Za-z0-9_-]{1,64}$", o.ClientID)
	}
	if o.SharedGroup != "" && (strings.ContainsAny(o.SharedGroup, "/+#") || !utf8.ValidString(o.SharedGroup)) {
		bad("SharedGroup %q must not contain '/', '+' or '#'", o.SharedGroup)
	}
	if o.Lookup == nil {
		bad("Lookup is required")
	}
	if o.Writer == nil {
		bad("Writer is required")
	}
	for i, c := range o.Consumers {
		if c == nil {
			bad("Consumers[%d] is nil", i)
		}
	}
	positive := func(name string, v time.Duration) {
		if v < 0 {
			bad("%s %v must be positive", name, v)
		}
	}
	positive("KeepAlive", o.KeepAlive)
	positive("ConnectTimeout", o.ConnectTimeout)
	positive("MaxAge", o.MaxAge)
	positive("MaxFuture", o.MaxFuture)
	positive("FlushInterval", o.FlushInterval)
	positive("WriteTimeout", o.WriteTimeout)
	positive("ShutdownTimeout", o.ShutdownTimeout)
	atLeast := func(name string, v, least int) {
		if v < least {
			bad("%s %d must be at least %d", name, v, least)
		}
	}
	atLeast("MaxPayloadBytes", o.MaxPayloadBytes, 16)
	atLeast("MaxReadings", o.MaxReadings, 1)
	atLeast("BatchSize", o.BatchSize, 1)
	atLeast("QueueSize", o.QueueSize, 2)
	atLeast("Workers", o.Workers, 1)
	atLeast("WriteConcurrency", o.WriteConcurrency, 1)
	atLeast("DeadLetterQueue", o.DeadLetterQueue, 1)
	atLeast("DeadLetterStoreSize", o.DeadLetterStoreSize, 1)
	atLeast("DeadLetterStoreBytes", o.DeadLetterStoreBytes, 1024)
	if o.SpoolDir != "" && o.SpoolMaxBytes < MinSpoolMaxBytes {
		bad("SpoolMaxBytes %d must be at least %d", o.SpoolMaxBytes, MinSpoolMaxBytes)
	}
	atLeast("DeviceBurst", o.DeviceBurst, 1)
	return errors.Join(errs...)
}
