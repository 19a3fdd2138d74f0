package configs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// want is the documented default configuration, written out independently
// of infrawatch.yaml so a slip in either shows up.
var want = Config{
	HTTP: HTTPConfig{
		Listen:            "127.0.0.1:8080",
		MaxBodyBytes:      1048576,
		StreamMaxSendRate: 300000,
		ShutdownTimeout:   10 * time.Second,
	},
	MQTT: MQTTConfig{
		ClientID:       "infrawatch-ingest",
		Keepalive:      30 * time.Second,
		ConnectTimeout: 10 * time.Second,
	},
	Broker: BrokerConfig{
		Listen:           "127.0.0.1:1883",
		MaxPendingWrites: 1024,
		ReceiveMaximum:   65535,
		MaxInflight:      65535,
		MaxPacketBytes:   262144,
	},
	Influx: InfluxConfig{
		URL:           "http://127.0.0.1:8086",
		Bucket:        "infrawatch",
		BatchSize:     5000,
		FlushInterval: 100 * time.Millisecond,
		Timeout:       10 * time.Second,
		MaxRetries:    5,
	},
	Ingest: IngestConfig{
		MaxPayloadBytes:  65536,
		MaxReadings:      1000,
		MaxAge:           168 * time.Hour,
		MaxFuture:        5 * time.Minute,
		QueueSize:        20000,
		Workers:          2,
		WriteConcurrency: 3,
		DeviceRateLimit:  10,
		DeviceBurst:      100,
		SpoolDir:         "data/spool",
		SpoolMaxBytes:    1 << 30,

		DeadLetterStoreSize:  10000,
		DeadLetterStoreBytes: 64 << 20,
	},
	Devices: DevicesConfig{DBPath: "data/infrawatch.db", SweepInterval: time.Second,
		SeedWindow: 24 * time.Hour, SeedTimeout: 30 * time.Second},
	History: HistoryConfig{QueryTimeout: 5 * time.Minute, Rollup: true, RollupInterval: 5 * time.Minute,
		RollupLookback: 3 * time.Hour, RollupBackfill: 48 * time.Hour},
	Alerts: AlertsConfig{WebhookTimeout: 10 * time.Second, FoldWait: 30 * time.Second, OfflineSeverity: "warning", ReorderWindow: 2 * time.Second,
		RedeliverWithin: time.Hour, SilenceRetention: 24 * time.Hour},
	Auth: AuthConfig{FailuresPerMinute: 10, FailureBurst: 20},
	Log:  LogConfig{Level: "info", Format: "text"},
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "infrawatch.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

// fieldErrors splits a Load/Validate error into its FieldErrors.
func fieldErrors(t *testing.T, err error) []*FieldError {
	t.Helper()
	require.Error(t, err)
	var out []*FieldError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			var fe *FieldError
			require.ErrorAs(t, e, &fe)
			out = append(out, fe)
		}
		return out
	}
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	return []*FieldError{fe}
}

func TestDefaults(t *testing.T) {
	d := Default()
	assert.Equal(t, want, *d)
	require.NoError(t, d.Validate())

	c, err := Load("", nil)
	require.NoError(t, err)
	assert.Equal(t, want, *c)

	// The reference file itself loads as a config file unchanged.
	c, err = Load(writeFile(t, string(Reference())), nil)
	require.NoError(t, err)
	assert.Equal(t, want, *c)

	// Default hands out independent copies.
	d.HTTP.AllowedOrigins = append(d.HTTP.AllowedOrigins, "https://x.example")
	d.Log.Level = "debug"
	assert.Equal(t, want, *Default())
}

// TestReferenceDocumentsEveryField walks the struct and requires each key in
// the embedded YAML with a comment above or beside it, and each yaml key to
// be snake_case with section names free of underscores (the env mapping
// relies on that).
func TestReferenceDocumentsEveryField(t *testing.T) {
	var doc yaml.Node
	require.NoError(t, yaml.Unmarshal(reference, &doc))
	root := doc.Content[0]
	lookup := func(m *yaml.Node, name string) (*yaml.Node, *yaml.Node) {
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == name {
				return m.Content[i], m.Content[i+1]
			}
		}
		return nil, nil
	}
	st := reflect.TypeFor[Config]()
	for i := range st.NumField() {
		sec := st.Field(i)
		sname := yamlName(sec)
		require.NotEmpty(t, sname, "section %s has no yaml tag", sec.Name)
		assert.NotContains(t, sname, "_", "section names must not contain '_'")
		sk, sv := lookup(root, sname)
		if !assert.NotNil(t, sk, "section %q missing from infrawatch.yaml", sname) {
			continue
		}
		assert.NotEmpty(t, sk.HeadComment, "section %q has no comment", sname)
		var prev *yaml.Node
		for j := range sec.Type.NumField() {
			f := sec.Type.Field(j)
			name := yamlName(f)
			require.NotEmpty(t, name, "%s.%s has no yaml tag", sec.Name, f.Name)
			assert.Equal(t, strings.ToLower(name), name)
			k, _ := lookup(sv, name)
			if !assert.NotNil(t, k, "key %s.%s missing from infrawatch.yaml", sname, name) {
				continue
			}
			// A pair like tls_cert/tls_key shares the comment above the first.
			documented := k.HeadComment != "" || k.LineComment != "" || (prev != nil && prev.Line == k.Line-1)
			assert.True(t, documented, "key %s.%s has no comment", sname, name)
			prev = k
		}
	}
}

func TestSecretsTagged(t *testing.T) {
	st := reflect.TypeFor[Config]()
	for i := range st.NumField() {
		sec := st.Field(i)
		for j := range sec.Type.NumField() {
			f := sec.Type.Field(j)
			n := yamlName(f)
			if strings.Contains(n, "token") || strings.Contains(n, "password") || strings.Contains(n, "secret") {
				assert.Equal(t, "true", f.Tag.Get("secret"), "%s.%s must be tagged secret", yamlName(sec), n)
			}
		}
	}
}

func TestFileOverlay(t *testing.T) {
	p := writeFile(t, `
http:
  listen: "0.0.0.0:9090"
  allowed_origins: ["https://ops.example.org", "http://localhost:3000"]
mqtt:
  broker_url: tcp://broker.example.org:1883
  shared_group: infrawatch
influx:
  flush_interval: 250ms
  batch_size: 1_000
ingest:
  auto_register: true
log:
`)
	c, err := Load(p, nil)
	require.NoError(t, err)
	w := want
	w.HTTP.Listen = "0.0.0.0:9090"
	w.HTTP.AllowedOrigins = []string{"https://ops.example.org", "http://localhost:3000"}
	w.MQTT.BrokerURL = "tcp://broker.example.org:1883"
	w.MQTT.SharedGroup = "infrawatch"
	w.Influx.FlushInterval = 250 * time.Millisecond
	w.Influx.BatchSize = 1000
	w.Ingest.AutoRegister = true
	assert.Equal(t, w, *c)

	// An empty file changes nothing.
	c, err = Load(writeFile(t, ""), nil)
	require.NoError(t, err)
	assert.Equal(t, want, *c)
}

func TestMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil)
	require.Error(t, err)
	assert.ErrorIs(t, err, fs.ErrNotExist)
}

func TestEnvOverride(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		edit func(c *Config)
	}{
		{"string", []string{"INFRAWATCH_MQTT_BROKER_URL=mqtts://b.example:8883"}, func(c *Config) { c.MQTT.BrokerURL = "mqtts://b.example:8883" }},
		{"string empty", []string{"INFRAWATCH_INFLUX_ORG="}, func(c *Config) {}},
		{"int", []string{"INFRAWATCH_INGEST_WORKERS=8"}, func(c *Config) { c.Ingest.Workers = 8 }},
		{"int64", []string{"INFRAWATCH_HTTP_MAX_BODY_BYTES=2048"}, func(c *Config) { c.HTTP.MaxBodyBytes = 2048 }},
		{"bool", []string{"INFRAWATCH_INGEST_AUTO_REGISTER=true"}, func(c *Config) { c.Ingest.AutoRegister = true }},
		{"duration", []string{"INFRAWATCH_INFLUX_FLUSH_INTERVAL=2s"}, func(c *Config) { c.Influx.FlushInterval = 2 * time.Second }},
		{"seed window", []string{"INFRAWATCH_DEVICES_SEED_WINDOW=72h"}, func(c *Config) { c.Devices.SeedWindow = 72 * time.Hour }},
		{"seed timeout", []string{"INFRAWATCH_DEVICES_SEED_TIMEOUT=5s"}, func(c *Config) { c.Devices.SeedTimeout = 5 * time.Second }},
		{"redeliver within", []string{"INFRAWATCH_ALERTS_REDELIVER_WITHIN=15m"}, func(c *Config) { c.Alerts.RedeliverWithin = 15 * time.Minute }},
		{"silence retention", []string{"INFRAWATCH_ALERTS_SILENCE_RETENTION=168h"}, func(c *Config) { c.Alerts.SilenceRetention = 168 * time.Hour }},
		{"list", []string{"INFRAWATCH_HTTP_ALLOWED_ORIGINS=https://a.example, https://b.example:8443"}, func(c *Config) {
			c.HTTP.AllowedOrigins = []string{"https://a.example", "https://b.example:8443"}
		}},
		{"list empty", []string{"INFRAWATCH_HTTP_ALLOWED_ORIGINS="}, func(c *Config) {}},
		{"last wins", []string{"INFRAWATCH_LOG_LEVEL=warn", "INFRAWATCH_LOG_LEVEL=debug"}, func(c *Config) { c.Log.Level = "debug" }},
		{"admin token alias", []string{"INFRAWATCH_ADMIN_TOKEN=0123456789abcdef-alias"}, func(c *Config) { c.Auth.AdminToken = "0123456789abcdef-alias" }},
		{"section token wins", []string{"INFRAWATCH_AUTH_ADMIN_TOKEN=0123456789abcdef-auth", "INFRAWATCH_ADMIN_TOKEN=0123456789abcdef-alias"}, func(c *Config) {
			c.Auth.AdminToken = "0123456789abcdef-auth"
		}},
		{"ignored vars", []string{"INFRAWATCH_INFLUXD=/bin/influxd", "PATH=/bin", "OTHER_INFRAWATCH_X=1", "INFRAWATCH_ADMIN_TOKEN="}, func(c *Config) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load("", tt.env)
			require.NoError(t, err)
			w := *Default()
			tt.edit(&w)
			assert.Equal(t, w, *c)
		})
	}
}

func TestEnvOverridesFile(t *testing.T) {
	p := writeFile(t, "influx:\n  bucket: fromfile\n  org: acme\nauth:\n  admin_token: file-token-0123456789\n")
	c, err := Load(p, []string{"INFRAWATCH_INFLUX_BUCKET=fromenv", "INFRAWATCH_ADMIN_TOKEN="})
	require.NoError(t, err)
	assert.Equal(t, "fromenv", c.Influx.Bucket)
	assert.Equal(t, "acme", c.Influx.Org)
	assert.Equal(t, "file-token-0123456789", c.Auth.AdminToken, "an empty INFRAWATCH_ADMIN_TOKEN must not wipe the file's")
}

func TestEnvErrors(t *testing.T) {
	tests := []struct {
		env     string
		key     string
		unknown bool
		msg     string
	}{
		{"INFRAWATCH_MQTT_BROKR_URL=x", "mqtt.brokr_url", true, `env INFRAWATCH_MQTT_BROKR_URL: unknown key "mqtt.brokr_url"`},
		{"INFRAWATCH_NOPE_X=1", "nope", true, `env INFRAWATCH_NOPE_X: unknown section "nope"`},
		{"INFRAWATCH_HTTP=1", "http", true, `env INFRAWATCH_HTTP: unknown key "http"`},
		{"INFRAWATCH_INGEST_WORKERS=two", "ingest.workers", false, `env INFRAWATCH_INGEST_WORKERS: ingest.workers: bad integer "two"`},
		{"INFRAWATCH_INGEST_WORKERS=0", "ingest.workers", false, `env INFRAWATCH_INGEST_WORKERS: ingest.workers: 0 is below the minimum 1`},
		{"INFRAWATCH_INGEST_AUTO_REGISTER=maybe", "ingest.auto_register", false, `env INFRAWATCH_INGEST_AUTO_REGISTER: ingest.auto_register: bad boolean "maybe"`},
		{"INFRAWATCH_INFLUX_TIMEOUT=10", "influx.timeout", false, `env INFRAWATCH_INFLUX_TIMEOUT: influx.timeout: bad duration "10"`},
		{"INFRAWATCH_DEVICES_SEED_WINDOW=0s", "devices.seed_window", false, `env INFRAWATCH_DEVICES_SEED_WINDOW: devices.seed_window: 0s is below the minimum 1m0s`},
		{"INFRAWATCH_DEVICES_SEED_TIMEOUT=1d", "devices.seed_timeout", false, `env INFRAWATCH_DEVICES_SEED_TIMEOUT: devices.seed_timeout: bad duration "1d"`},
		{"INFRAWATCH_ALERTS_REDELIVER_WITHIN=0s", "alerts.redeliver_within", false, `env INFRAWATCH_ALERTS_REDELIVER_WITHIN: alerts.redeliver_within: 0s is below the minimum 1s`},
		{"INFRAWATCH_ALERTS_SILENCE_RETENTION=-1h", "alerts.silence_retention", false, `env INFRAWATCH_ALERTS_SILENCE_RETENTION: alerts.silence_retention: -1h0m0s is below the minimum 1m0s`},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			_, err := Load("", []string{tt.env})
			fes := fieldErrors(t, err)
			require.Len(t, fes, 1, "%v", err)
			assert.Equal(t, tt.key, fes[0].Key)
			assert.Contains(t, fes[0].Error(), tt.msg)
			assert.Equal(t, tt.unknown, errors.Is(fes[0], ErrUnknownKey))
		})
	}
}

// TestBadFileReportsEverything: one Load names every bad key with its line.
func TestBadFileReportsEverything(t *testing.T) {
	p := writeFile(t, `http:
  listen: "localhost"
  tls_cert: /etc/cert.pem
  allowed_origins: ["*"]
influx:
  urll: http://x
  url: ftp://x
  flush_interval: 10 parsecs
  batch_size: 0
mqtt:
  broker_url: http://broker:1883
  keepalive: [1]
  client_id: "bad/id"
ingest:
  workers: many
  workers: 3
log:
  level: loud
extra:
  a: 1
devices: [1, 2]
`)
	_, err := Load(p, []string{"INFRAWATCH_LOG_FORMAT=xml", "INFRAWATCH_BOGUS_KEY=1"})
	fes := fieldErrors(t, err)
	got := map[string]string{}
	for _, fe := range fes {
		got[fe.Key] += fe.Error() + "\n"
	}
	wantMsgs := map[string]string{
		"http.listen":           p + `:2: http.listen: bad host:port "localhost"`,
		"http.tls_cert":         p + `:3: http.tls_cert: set without http.tls_key`,
		"http.allowed_origins":  p + `:4: http.allowed_origins: item 0 "*"`,
		"influx.urll":           p + `:6: unknown key "influx.urll"`,
		"influx.url":            p + `:7: influx.url: bad URL "ftp://x"`,
		"influx.flush_interval": p + `:8: influx.flush_interval: bad duration "10 parsecs"`,
		"influx.batch_size":     p + `:9: influx.batch_size: 0 is below the minimum 1`,
		"mqtt.broker_url":       p + `:11: mqtt.broker_url: bad URL "http://broker:1883": scheme must be`,
		"mqtt.keepalive":        p + `:12: mqtt.keepalive: expected a single value, got a list`,
		"mqtt.client_id":        p + `:13: mqtt.client_id: "bad/id" must match`,
		"ingest.workers":        p + `:15: ingest.workers: bad integer "many"`,
		"log.level":             p + `:18: log.level: "loud" is not one of debug, info, warn, error`,
		"extra":                 p + `:19: unknown section "extra"`,
		"devices":               p + `:21: devices: expected a mapping of keys, got a list`,
		"log.format":            `env INFRAWATCH_LOG_FORMAT: log.format: "xml" is not one of text, json`,
		"bogus":                 `env INFRAWATCH_BOGUS_KEY: unknown section "bogus"`,
	}
	for key, msg := range wantMsgs {
		if assert.Contains(t, got, key, "no error for %s in:\n%v", key, err) {
			assert.Contains(t, got[key], msg)
			assert.Contains(t, err.Error(), msg)
		}
	}
	// ingest.workers appears twice: the bad value and the duplicate key.
	assert.Contains(t, err.Error(), p+`:16: ingest.workers: duplicate key`)
	assert.Len(t, fes, len(wantMsgs)+1, "%v", err)
}

func TestParseError(t *testing.T) {
	p := writeFile(t, "http:\n  listen: [\n")
	_, err := Load(p, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), p+": parse YAML")
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(c *Config)
		key  string // "" means valid
	}{
		{"defaults", func(c *Config) {}, ""},
		{"tls pair", func(c *Config) { c.HTTP.TLSCert, c.HTTP.TLSKey = "c.pem", "k.pem" }, ""},
		{"tls key alone", func(c *Config) { c.HTTP.TLSKey = "k.pem" }, "http.tls_key"},
		{"broker tls pair", func(c *Config) { c.Broker.TLSCert, c.Broker.TLSKey = "c.pem", "k.pem" }, ""},
		{"broker tls cert alone", func(c *Config) { c.Broker.TLSCert = "c.pem" }, "broker.tls_cert"},
		{"reorder negative", func(c *Config) { c.Alerts.ReorderWindow = -time.Second }, "alerts.reorder_window"},
		{"auth failures zero", func(c *Config) { c.Auth.FailuresPerMinute = 0 }, "auth.failures_per_minute"},
		{"auth burst zero", func(c *Config) { c.Auth.FailureBurst = 0 }, "auth.failure_burst"},
		{"listen port 0", func(c *Config) { c.HTTP.Listen = "127.0.0.1:0" }, ""},
		{"listen ipv6", func(c *Config) { c.Broker.Listen = "[::1]:1883" }, ""},
		{"listen bad port", func(c *Config) { c.Broker.Listen = "127.0.0.1:99999" }, "broker.listen"},
		{"listen named port", func(c *Config) { c.HTTP.Listen = "127.0.0.1:http" }, "http.listen"},
		{"origin ok", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://ops.example.org:8443"} }, ""},
		{"origin path", func(c *Config) { c.HTTP.AllowedOrigins = []string{"https://ops.example.org/x"} }, "http.allowed_origins"},
		{"body too big", func(c *Config) { c.HTTP.MaxBodyBytes = 2 << 30 }, "http.max_body_bytes"},
		{"stream send rate too low", func(c *Config) { c.HTTP.StreamMaxSendRate = 10 }, "http.stream_max_send_rate"},
		{"shutdown zero", func(c *Config) { c.HTTP.ShutdownTimeout = 0 }, "http.shutdown_timeout"},
		{"admin token short", func(c *Config) { c.Auth.AdminToken = "admin" }, "auth.admin_token"},
		{"admin token space", func(c *Config) { c.Auth.AdminToken = "0123456789 abcdef" }, "auth.admin_token"},
		{"admin token ok", func(c *Config) { c.Auth.AdminToken = "0123456789abcdef" }, ""},
		{"broker tcp", func(c *Config) { c.MQTT.BrokerURL = "tcp://127.0.0.1:1883" }, ""},
		{"broker ssl", func(c *Config) { c.MQTT.BrokerURL = "ssl://b.example:8883" }, ""},
		{"broker mqtt", func(c *Config) { c.MQTT.BrokerURL = "mqtt://u:p@b.example:1883" }, ""},
		{"broker ws", func(c *Config) { c.MQTT.BrokerURL = "ws://b.example/mqtt" }, ""},
		{"broker wss", func(c *Config) { c.MQTT.BrokerURL = "wss://b.example:443/mqtt" }, ""},
		{"broker no port", func(c *Config) { c.MQTT.BrokerURL = "tcp://b.example" }, "mqtt.broker_url"},
		{"broker no host", func(c *Config) { c.MQTT.BrokerURL = "tcp://:1883" }, "mqtt.broker_url"},
		{"broker bare", func(c *Config) { c.MQTT.BrokerURL = "b.example:1883" }, "mqtt.broker_url"},
		{"client id empty", func(c *Config) { c.MQTT.ClientID = "" }, "mqtt.client_id"},
		{"shared group wildcard", func(c *Config) { c.MQTT.SharedGroup = "a+b" }, "mqtt.shared_group"},
		{"keepalive fraction", func(c *Config) { c.MQTT.Keepalive = 1500 * time.Millisecond }, "mqtt.keepalive"},
		{"keepalive too long", func(c *Config) { c.MQTT.Keepalive = 24 * time.Hour }, "mqtt.keepalive"},
		{"connect timeout negative", func(c *Config) { c.MQTT.ConnectTimeout = -time.Second }, "mqtt.connect_timeout"},
		{"pending writes", func(c *Config) { c.Broker.MaxPendingWrites = 0 }, "broker.max_pending_writes"},
		{"receive maximum", func(c *Config) { c.Broker.ReceiveMaximum = 65536 }, "broker.receive_maximum"},
		{"inflight", func(c *Config) { c.Broker.MaxInflight = 0 }, "broker.max_inflight"},
		{"influx https", func(c *Config) { c.Influx.URL = "https://influx.example/prefix" }, ""},
		{"influx no scheme", func(c *Config) { c.Influx.URL = "127.0.0.1:8086" }, "influx.url"},
		{"bucket db/rp", func(c *Config) { c.Influx.Bucket = "infrawatch/autogen" }, ""},
		{"bucket half", func(c *Config) { c.Influx.Bucket = "infrawatch/" }, "influx.bucket"},
		{"bucket empty", func(c *Config) { c.Influx.Bucket = "" }, "influx.bucket"},
		{"retries zero", func(c *Config) { c.Influx.MaxRetries = 0 }, ""},
		{"retries negative", func(c *Config) { c.Influx.MaxRetries = -1 }, "influx.max_retries"},
		{"timeout zero", func(c *Config) { c.Influx.Timeout = 0 }, "influx.timeout"},
		{"payload", func(c *Config) { c.Ingest.MaxPayloadBytes = 0 }, "ingest.max_payload_bytes"},
		{"readings", func(c *Config) { c.Ingest.MaxReadings = 0 }, "ingest.max_readings"},
		{"max age", func(c *Config) { c.Ingest.MaxAge = 0 }, "ingest.max_age"},
		{"max future zero", func(c *Config) { c.Ingest.MaxFuture = 0 }, ""},
		{"max future negative", func(c *Config) { c.Ingest.MaxFuture = -time.Second }, "ingest.max_future"},
		{"queue", func(c *Config) { c.Ingest.QueueSize = 0 }, "ingest.queue_size"},
		{"rate limit", func(c *Config) { c.Ingest.DeviceRateLimit = 0 }, "ingest.device_rate_limit"},
		{"burst", func(c *Config) { c.Ingest.DeviceBurst = 0 }, "ingest.device_burst"},
		{"db path", func(c *Config) { c.Devices.DBPath = " " }, "devices.db_path"},
		{"sweep", func(c *Config) { c.Devices.SweepInterval = time.Millisecond }, "devices.sweep_interval"},
		{"seed window zero", func(c *Config) { c.Devices.SeedWindow = 0 }, "devices.seed_window"},
		{"seed window too long", func(c *Config) { c.Devices.SeedWindow = 31 * 24 * time.Hour }, "devices.seed_window"},
		{"seed timeout zero", func(c *Config) { c.Devices.SeedTimeout = 0 }, "devices.seed_timeout"},
		{"seed timeout too long", func(c *Config) { c.Devices.SeedTimeout = time.Hour }, "devices.seed_timeout"},
		{"redeliver zero", func(c *Config) { c.Alerts.RedeliverWithin = 0 }, "alerts.redeliver_within"},
		{"redeliver too long", func(c *Config) { c.Alerts.RedeliverWithin = 8 * 24 * time.Hour }, "alerts.redeliver_within"},
		{"silence retention zero", func(c *Config) { c.Alerts.SilenceRetention = 0 }, "alerts.silence_retention"},
		{"silence retention too long", func(c *Config) { c.Alerts.SilenceRetention = 366 * 24 * time.Hour }, "alerts.silence_retention"},
		{"log json", func(c *Config) { c.Log.Format = "json" }, ""},
		{"log level", func(c *Config) { c.Log.Level = "INFO" }, "log.level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.edit(c)
			err := c.Validate()
			if tt.key == "" {
				require.NoError(t, err)
				return
			}
			fes := fieldErrors(t, err)
			require.Len(t, fes, 1, "%v", err)
			assert.Equal(t, tt.key, fes[0].Key)
			assert.True(t, strings.HasPrefix(fes[0].Error(), tt.key+": "), fes[0].Error())
		})
	}
}

func TestErrorsNeverEchoSecrets(t *testing.T) {
	c := Default()
	c.Auth.AdminToken = "short secret"
	c.MQTT.BrokerURL = "http://user:hunter2@b.example:1883"
	err := c.Validate()
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "short secret")
	assert.NotContains(t, err.Error(), "hunter2")
}

func TestRedacted(t *testing.T) {
	c := Default()
	c.Auth.AdminToken = "admin-token-0123456789"
	c.MQTT.Password = "mqtt-pass"
	c.MQTT.BrokerURL = "tcp://ingest:url-pass@b.example:1883"
	c.Influx.Token = "influx-token"
	c.HTTP.AllowedOrigins = []string{"https://a.example"}

	r := c.Redacted()
	assert.Equal(t, Redaction, r.Auth.AdminToken)
	assert.Equal(t, Redaction, r.MQTT.Password)
	assert.Equal(t, Redaction, r.Influx.Token)
	assert.Equal(t, "tcp://ingest:REDACTED@b.example:1883", r.MQTT.BrokerURL)
	assert.Equal(t, c.Influx.URL, r.Influx.URL)
	assert.Equal(t, "", Default().Redacted().Influx.Token, "an unset secret stays visibly unset")

	// The original is untouched and shares no slice with the copy.
	assert.Equal(t, "mqtt-pass", c.MQTT.Password)
	r.HTTP.AllowedOrigins[0] = "changed"
	assert.Equal(t, "https://a.example", c.HTTP.AllowedOrigins[0])
}

func TestSlogLevel(t *testing.T) {
	for _, lv := range []string{"debug", "info", "warn", "error"} {
		assert.Equal(t, strings.ToUpper(lv), LogConfig{Level: lv}.SlogLevel().String())
	}
}
