package configs

import (
	_ "embed"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"
)

// DefaultFile is where the reference configuration lives in the repository,
// the file `infrawatch serve` is pointed at by convention.
const DefaultFile = "configs/infrawatch.yaml"

// reference is the commented default configuration. It is parsed as the
// defaults so that the documentation and the code cannot disagree.
//
//go:embed infrawatch.yaml
var reference []byte

// Config is the whole infrawatch configuration. Each field is a section; the
// yaml tag is the section name used in files and in environment variables.
type Config struct {
	HTTP    HTTPConfig    `yaml:"http"`
	Auth    AuthConfig    `yaml:"auth"`
	MQTT    MQTTConfig    `yaml:"mqtt"`
	Broker  BrokerConfig  `yaml:"broker"`
	Influx  InfluxConfig  `yaml:"influx"`
	Ingest  IngestConfig  `yaml:"ingest"`
	Devices DevicesConfig `yaml:"devices"`
	Alerts  AlertsConfig  `yaml:"alerts"`
	History HistoryConfig `yaml:"history"`
	Log     LogConfig     `yaml:"log"`
}

// HTTPConfig configures the HTTP API, the dashboard and websockets.
type HTTPConfig struct {
	// Listen is the host:port the API listens on.
	Listen string `yaml:"listen"`
	// AllowedOrigins lists the origins (scheme://host[:port]) allowed to open
	// a websocket; empty means same-origin only.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// MaxBodyBytes bounds request bodies.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// StreamMaxSendRate bounds the events per second the websocket hub
	// sends to all clients together (a write counts as several events).
	StreamMaxSendRate int `yaml:"stream_max_send_rate"`
	// ShutdownTimeout bounds the whole graceful shutdown (requests in
	// flight, draining the broker, the final flush); past it serve exits
	// with an error.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// TLSCert and TLSKey are PEM files; both set serves HTTPS.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
}

// AuthConfig configures API authentication.
type AuthConfig struct {
	// AdminToken is the bootstrap admin bearer token; empty means none.
	AdminToken string `yaml:"admin_token" secret:"true"`
	// FailuresPerMinute and FailureBurst limit failed authentications per
	// client address (API) and per address and username (embedded broker).
	FailuresPerMinute int `yaml:"failures_per_minute"`
	FailureBurst      int `yaml:"failure_burst"`
}

// MQTTConfig configures the MQTT connection ingest uses.
type MQTTConfig struct {
	// BrokerURL is the broker to connect to; empty means the embedded broker.
	BrokerURL string `yaml:"broker_url" secret:"userinfo"`
	// ClientID is ingest's MQTT client id (persistent session).
	ClientID string `yaml:"client_id"`
	// Username and Password authenticate to an external broker.
	Username string `yaml:"username"`
	Password string `yaml:"password" secret:"true"`
	// SharedGroup, when set, makes ingest subscribe via $share/<group>/...
	SharedGroup string `yaml:"shared_group"`
	// Keepalive is the MQTT keepalive interval (whole seconds).
	Keepalive time.Duration `yaml:"keepalive"`
	// ConnectTimeout bounds connecting to the broker.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// BrokerConfig configures the embedded mochi-mqtt broker. The int fields are
// validated to fit mochi's types (MaxPendingWrites int32, the others uint16).
type BrokerConfig struct {
	// Listen is the TCP host:port of the broker.
	Listen string `yaml:"listen"`
	// MaxPendingWrites bounds each client's outbound queue.
	MaxPendingWrites int `yaml:"max_pending_writes"`
	// ReceiveMaximum is the MQTT 5 receive maximum announced to clients.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxInflight bounds QoS 1/2 messages in flight per client.
	MaxInflight int `yaml:"max_inflight"`
	// TLSCert and TLSKey are PEM files; both set serves MQTT over TLS only.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// MaxPacketBytes bounds one MQTT packet; larger ones disconnect the client.
	MaxPacketBytes int `yaml:"max_packet_bytes"`
}

// InfluxConfig configures the InfluxDB v2-API client.
type InfluxConfig struct {
	// URL is the http(s) base URL of InfluxDB.
	URL string `yaml:"url" secret:"userinfo"`
	// Token is the API token ("user:password" for InfluxDB 1.8).
	Token string `yaml:"token" secret:"true"`
	// Org is the organisation (ignored by InfluxDB 1.8).
	Org string `yaml:"org"`
	// Bucket receives readings ("db" or "db/rp" on InfluxDB 1.8).
	Bucket string `yaml:"bucket"`
	// BatchSize is the number of points per write.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval bounds how long a point waits in a partial batch.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// Timeout bounds one HTTP request.
	Timeout time.Duration `yaml:"timeout"`
	// MaxRetries bounds retries of a retryable write failure.
	MaxRetries int `yaml:"max_retries"`
}

// IngestConfig configures decoding and admission of device messages.
type IngestConfig struct {
	// AutoRegister registers unknown devices instead of rejecting them.
	AutoRegister bool `yaml:"auto_register"`
	// MaxPayloadBytes bounds one MQTT payload.
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// MaxReadings bounds the readings in one message.
	MaxReadings int `yaml:"max_readings"`
	// MaxAge is the oldest accepted reading timestamp, relative to arrival.
	MaxAge time.Duration `yaml:"max_age"`
	// MaxFuture is how far ahead of arrival a timestamp may be.
	MaxFuture time.Duration `yaml:"max_future"`
	// QueueSize bounds messages waiting for a worker.
	QueueSize int `yaml:"queue_size"`
	// Workers is the number of decoding goroutines.
	Workers int `yaml:"workers"`
	// DeviceRateLimit is the multiple of a device's expected rate allowed
	// before readings are rejected as rate_limited.
	DeviceRateLimit int `yaml:"device_rate_limit"`
	// DeviceBurst is the token-bucket size above that rate.
	DeviceBurst int `yaml:"device_burst"`
	// SpoolDir holds batches while InfluxDB is unreachable; empty disables it.
	SpoolDir string `yaml:"spool_dir"`
	// SpoolMaxBytes bounds the spool; when full, ingest stops acknowledging.
	SpoolMaxBytes int64 `yaml:"spool_max_bytes"`
	// DeadLetterStoreSize bounds the dead letters kept for listing and replay.
	DeadLetterStoreSize int `yaml:"deadletter_store_size"`
	// DeadLetterStoreBytes bounds their memory.
	DeadLetterStoreBytes int `yaml:"deadletter_store_bytes"`
	// WriteConcurrency is how many batches may be in flight to InfluxDB.
	WriteConcurrency int `yaml:"write_concurrency"`
}

// DevicesConfig configures the device registry and live status.
type DevicesConfig struct {
	// DBPath is the SQLite database file.
	DBPath string `yaml:"db_path"`
	// SweepInterval is how often device status is re-evaluated.
	SweepInterval time.Duration `yaml:"sweep_interval"`
	// SeedWindow is how far back serve looks, at start-up, for each
	// device's newest stored reading to seed live state and absence timers.
	SeedWindow time.Duration `yaml:"seed_window"`
	// SeedTimeout bounds that look-up; start-up waits for it.
	SeedTimeout time.Duration `yaml:"seed_timeout"`
}

// AlertsConfig configures the alert engine and its notifications.
type AlertsConfig struct {
	// WebhookSecret keys the HMAC-SHA256 signature of webhook bodies.
	WebhookSecret string `yaml:"webhook_secret" secret:"true"`
	// WebhookTimeout bounds one webhook POST.
	WebhookTimeout time.Duration `yaml:"webhook_timeout"`
	// FoldWait is how long a device's offline or absence alert waits for its
	// gateway's, so a gateway outage pages once.
	FoldWait time.Duration `yaml:"fold_wait"`
	// OfflineSeverity is the severity of the built-in device_offline alert.
	OfflineSeverity string `yaml:"offline_severity"`
	// ReorderWindow holds each device's readings this long so that rules
	// evaluate them in reading-time order; 0 evaluates on arrival.
	ReorderWindow time.Duration `yaml:"reorder_window"`
	// RedeliverWithin is how old a notification cut short by a shutdown
	// may be and still be sent again at the next start.
	RedeliverWithin time.Duration `yaml:"redeliver_within"`
	// SilenceRetention is how long an ended silence stays listed and
	// stored before it is deleted.
	SilenceRetention time.Duration `yaml:"silence_retention"`
}

// HistoryConfig configures /history and the hourly rollup tier.
type HistoryConfig struct {
	// QueryTimeout bounds one history answer, CSV exports included.
	QueryTimeout time.Duration `yaml:"query_timeout"`
	// Rollup turns the hourly rollup tier on.
	Rollup bool `yaml:"rollup"`
	// RollupInterval is how often the last closed hours are rolled up.
	RollupInterval time.Duration `yaml:"rollup_interval"`
	// RollupLookback is how far back each rollup run recomputes.
	RollupLookback time.Duration `yaml:"rollup_lookback"`
	// RollupBackfill is how far back the first run after start goes.
	RollupBackfill time.Duration `yaml:"rollup_backfill"`
	// RawRetention, when non-zero, is set on the raw retention policy (1.x).
	RawRetention time.Duration `yaml:"raw_retention"`
	// RollupRetention is how long hourly rollups are kept; zero keeps them.
	RollupRetention time.Duration `yaml:"rollup_retention"`
}

// LogConfig configures log/slog.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// SlogLevel returns Level as a slog.Level; an unknown level (which Validate
// rejects) yields slog.LevelInfo.
func (l LogConfig) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

var (
	defaultsOnce sync.Once
	defaults     Config
)

// Default returns the defaults, parsed from the embedded infrawatch.yaml.
// Each call returns an independent copy.
func Default() *Config {
	defaultsOnce.Do(func() {
		var errs []*FieldError
		decodeYAML(reference, "infrawatch.yaml (embedded)", &defaults, nil, &errs)
		if len(errs) > 0 {
			// A broken embedded file is a build defect; the tests catch it.
			panic(fmt.Sprintf("configs: embedded defaults: %v", joinFieldErrors(errs)))
		}
	})
	c := defaults
	deepCopySlices(reflect.ValueOf(&c).Elem())
	return &c
}

// Reference returns the commented reference configuration (the embedded
// infrawatch.yaml), e.g. for a command that prints it.
func Reference() []byte {
	return append([]byte(nil), reference...)
}

// deepCopySlices replaces every slice reachable through struct fields of v
// with a copy, so copies of Config never share backing arrays.
func deepCopySlices(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			deepCopySlices(v.Field(i))
		}
	case reflect.Slice:
		if !v.IsNil() {
			s := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
			reflect.Copy(s, v)
			v.Set(s)
		}
	}
}
