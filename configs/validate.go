package configs

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// identRE is the SPEC's identity rule (device ids, MQTT usernames and client
// ids): nothing that could act as a topic wildcard or break line protocol.
var identRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// minAdminTokenLen keeps a guessable bootstrap admin token out of production.
const minAdminTokenLen = 16

// Validate checks every value and returns all problems joined, one
// *FieldError per problem, each naming its key.
func (c *Config) Validate() error {
	return joinFieldErrors(c.validate())
}

// checker collects problems; its helpers keep the rules one line each.
type checker struct{ errs []*FieldError }

func (ck *checker) addf(key, format string, args ...any) {
	ck.errs = append(ck.errs, &FieldError{Key: key, Msg: key + ": " + fmt.Sprintf(format, args...)})
}

func (ck *checker) intRange(key string, v, lo, hi int64) {
	switch {
	case v < lo:
		ck.addf(key, "%d is below the minimum %d", v, lo)
	case v > hi:
		ck.addf(key, "%d is above the maximum %d", v, hi)
	}
}

func (ck *checker) durRange(key string, v, lo, hi time.Duration) {
	switch {
	case v < lo:
		ck.addf(key, "%s is below the minimum %s", v, lo)
	case v > hi:
		ck.addf(key, "%s is above the maximum %s", v, hi)
	}
}

func (ck *checker) oneOf(key, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	ck.addf(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

func (ck *checker) notEmpty(key, v string) {
	if strings.TrimSpace(v) == "" {
		ck.addf(key, "must not be empty")
	}
}

// hostPort checks a listen address: host:port with a numeric port.
func (ck *checker) hostPort(key, v string) {
	if err := checkHostPort(v, true); err != nil {
		ck.addf(key, "bad host:port %q: %v", v, err)
	}
}

func checkHostPort(v string, allowZero bool) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return errors.New("host contains spaces")
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return fmt.Errorf("port %q is not a number", port)
	}
	if p < 0 || p > 65535 || (p == 0 && !allowZero) {
		return fmt.Errorf("port %d out of range", p)
	}
	return nil
}

func (c *Config) validate() []*FieldError {
	ck := &checker{}
	c.HTTP.validate(ck)
	c.Auth.validate(ck)
	c.MQTT.validate(ck)
	c.Broker.validate(ck)
	c.Influx.validate(ck)
	c.Ingest.validate(ck)
	c.Devices.validate(ck)
	c.Alerts.validate(ck)
	c.History.validate(ck)
	c.Log.validate(ck)
	return ck.errs
}

func (h *HTTPConfig) validate(ck *checker) {
	ck.hostPort("http.listen", h.Listen)
	for i, o := range h.AllowedOrigins {
		if err := checkOrigin(o); err != nil {
			ck.addf("http.allowed_origins", "item %d %q: %v", i, o, err)
		}
	}
	ck.intRange("http.max_body_bytes", h.MaxBodyBytes, 1, 1<<30)
	ck.intRange("http.stream_max_send_rate", int64(h.StreamMaxSendRate), 1000, 100_000_000)
	ck.durRange("http.shutdown_timeout", h.ShutdownTimeout, time.Millisecond, 10*time.Minute)
	switch {
	case h.TLSCert != "" && h.TLSKey == "":
		ck.addf("http.tls_cert", "set without http.tls_key")
	case h.TLSKey != "" && h.TLSCert == "":
		ck.addf("http.tls_key", "set without http.tls_cert")
	}
}

// checkOrigin accepts exactly what a browser sends in Origin:
// scheme://host[:port], nothing more, so comparisons are exact.
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("scheme must be http or https")
	}
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return errors.New("want scheme://host[:port] and nothing else")
	}
	return nil
}

func (a *AuthConfig) validate(ck *checker) {
	ck.intRange("auth.failures_per_minute", int64(a.FailuresPerMinute), 1, 1_000_000)
	ck.intRange("auth.failure_burst", int64(a.FailureBurst), 1, 1_000_000)
	t := a.AdminToken
	if t == "" {
		return
	}
	// Never echo the token: these messages end up in logs.
	if len(t) < minAdminTokenLen {
		ck.addf("auth.admin_token", "too short (%d characters, want at least %d)", len(t), minAdminTokenLen)
	}
	if strings.ContainsFunc(t, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		ck.addf("auth.admin_token", "contains whitespace or control characters")
	}
}

func (m *MQTTConfig) validate(ck *checker) {
	if m.BrokerURL != "" {
		if err := checkBrokerURL(m.BrokerURL); err != nil {
			ck.addf("mqtt.broker_url", "bad URL %q: %v", redactURL(m.BrokerURL), err)
		}
	}
	if !identRE.MatchString(m.ClientID) {
		ck.addf("mqtt.client_id", "%q must match %s", m.ClientID, identRE)
	}
	if m.SharedGroup != "" && !identRE.MatchString(m.SharedGroup) {
		ck.addf("mqtt.shared_group", "%q must match %s", m.SharedGroup, identRE)
	}
	// MQTT carries keepalive as a 16-bit number of seconds.
	ck.durRange("mqtt.keepalive", m.Keepalive, time.Second, 65535*time.Second)
	if m.Keepalive%time.Second != 0 {
		ck.addf("mqtt.keepalive", "%s is not a whole number of seconds", m.Keepalive)
	}
	ck.durRange("mqtt.connect_timeout", m.ConnectTimeout, time.Millisecond, 10*time.Minute)
}

// brokerSchemes are the URL schemes paho dials. wss is accepted beside ws
// because a broker behind TLS websockets is common.
var brokerSchemes = []string{"tcp", "ssl", "mqtt", "mqtts", "ws", "wss"}

func checkBrokerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	ok := false
	for _, sc := range brokerSchemes {
		ok = ok || u.Scheme == sc
	}
	if !ok {
		return fmt.Errorf("scheme must be one of %s", strings.Join(brokerSchemes, "://, ")+"://")
	}
	if u.Hostname() == "" {
		return errors.New("missing host")
	}
	if u.Scheme == "ws" || u.Scheme == "wss" {
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("bad port %q", p)
			}
		}
		return nil
	}
	// paho dials u.Host as is, so a TCP URL needs an explicit port.
	if u.Path != "" && u.Path != "/" {
		return errors.New("a tcp/ssl/mqtt/mqtts URL has no path")
	}
	if u.Port() == "" {
		return errors.New("missing port (e.g. tcp://host:1883)")
	}
	return checkHostPort(u.Host, false)
}

func (b *BrokerConfig) validate(ck *checker) {
	ck.hostPort("broker.listen", b.Listen)
	switch {
	case b.TLSCert != "" && b.TLSKey == "":
		ck.addf("broker.tls_cert", "set without broker.tls_key")
	case b.TLSKey != "" && b.TLSCert == "":
		ck.addf("broker.tls_key", "set without broker.tls_cert")
	}
	ck.intRange("broker.max_pending_writes", int64(b.MaxPendingWrites), 1, math.MaxInt32)
	ck.intRange("broker.receive_maximum", int64(b.ReceiveMaximum), 1, math.MaxUint16)
	ck.intRange("broker.max_inflight", int64(b.MaxInflight), 1, math.MaxUint16)
	ck.intRange("broker.max_packet_bytes", int64(b.MaxPacketBytes), 1024, 256<<20)
}

func (i *InfluxConfig) validate(ck *checker) {
	if u, err := url.Parse(i.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		ck.addf("influx.url", "bad URL %q: want http://host:port or https://host:port", redactURL(i.URL))
	}
	ck.notEmpty("influx.bucket", i.Bucket)
	if db, rp, ok := strings.Cut(i.Bucket, "/"); ok && (db == "" || rp == "") {
		ck.addf("influx.bucket", "%q: want \"database/retention_policy\" with both parts", i.Bucket)
	}
	ck.intRange("influx.batch_size", int64(i.BatchSize), 1, 1_000_000)
	ck.durRange("influx.flush_interval", i.FlushInterval, time.Millisecond, time.Hour)
	ck.durRange("influx.timeout", i.Timeout, time.Millisecond, 10*time.Minute)
	ck.intRange("influx.max_retries", int64(i.MaxRetries), 0, 100)
}

func (g *IngestConfig) validate(ck *checker) {
	// 268435455 is the largest MQTT packet.
	ck.intRange("ingest.max_payload_bytes", int64(g.MaxPayloadBytes), 1, 268435455)
	ck.intRange("ingest.max_readings", int64(g.MaxReadings), 1, 1_000_000)
	ck.durRange("ingest.max_age", g.MaxAge, time.Second, 10*365*24*time.Hour)
	ck.durRange("ingest.max_future", g.MaxFuture, 0, 365*24*time.Hour)
	ck.intRange("ingest.queue_size", int64(g.QueueSize), 1, 10_000_000)
	ck.intRange("ingest.workers", int64(g.Workers), 1, 1024)
	ck.intRange("ingest.write_concurrency", int64(g.WriteConcurrency), 1, 64)
	ck.intRange("ingest.device_rate_limit", int64(g.DeviceRateLimit), 1, 1_000_000)
	ck.intRange("ingest.device_burst", int64(g.DeviceBurst), 1, 1_000_000)
	if g.SpoolDir != "" {
		ck.intRange("ingest.spool_max_bytes", g.SpoolMaxBytes, 1<<20, 1<<50)
	}
	ck.intRange("ingest.deadletter_store_size", int64(g.DeadLetterStoreSize), 1, 10_000_000)
	ck.intRange("ingest.deadletter_store_bytes", int64(g.DeadLetterStoreBytes), 1024, 1<<40)
}

func (d *DevicesConfig) validate(ck *checker) {
	ck.notEmpty("devices.db_path", d.DBPath)
	ck.durRange("devices.sweep_interval", d.SweepInterval, 10*time.Millisecond, time.Hour)
	// On InfluxDB 1.8 the look-back's cost grows with the window (no last()
	// pushdown), and start-up waits for it: bound both.
	ck.durRange("devices.seed_window", d.SeedWindow, time.Minute, 30*24*time.Hour)
	ck.durRange("devices.seed_timeout", d.SeedTimeout, time.Second, 10*time.Minute)
}

func (a *AlertsConfig) validate(ck *checker) {
	ck.durRange("alerts.webhook_timeout", a.WebhookTimeout, 100*time.Millisecond, 5*time.Minute)
	ck.durRange("alerts.fold_wait", a.FoldWait, 0, time.Hour)
	ck.oneOf("alerts.offline_severity", a.OfflineSeverity, "info", "warning", "critical")
	ck.durRange("alerts.reorder_window", a.ReorderWindow, 0, time.Minute)
	// The engine reads 0 as its default, so 0 is refused rather than
	// silently meaning 1h or 24h.
	ck.durRange("alerts.redeliver_within", a.RedeliverWithin, time.Second, 7*24*time.Hour)
	ck.durRange("alerts.silence_retention", a.SilenceRetention, time.Minute, 365*24*time.Hour)
}

func (h *HistoryConfig) validate(ck *checker) {
	ck.durRange("history.query_timeout", h.QueryTimeout, time.Second, 24*time.Hour)
	ck.durRange("history.rollup_interval", h.RollupInterval, time.Second, 24*time.Hour)
	ck.durRange("history.rollup_lookback", h.RollupLookback, time.Hour, 30*24*time.Hour)
	ck.durRange("history.rollup_backfill", h.RollupBackfill, 0, 10*365*24*time.Hour)
	ck.durRange("history.raw_retention", h.RawRetention, 0, 100*365*24*time.Hour)
	ck.durRange("history.rollup_retention", h.RollupRetention, 0, 100*365*24*time.Hour)
	if h.RawRetention != 0 && h.RawRetention < time.Hour {
		ck.addf("history.raw_retention", "%s is under InfluxDB's minimum of 1h (0 keeps data forever)", h.RawRetention)
	}
	if h.RollupRetention != 0 && h.RollupRetention < time.Hour {
		ck.addf("history.rollup_retention", "%s is under InfluxDB's minimum of 1h (0 keeps data forever)", h.RollupRetention)
	}
}

func (l *LogConfig) validate(ck *checker) {
	ck.oneOf("log.level", l.Level, "debug", "info", "warn", "error")
	ck.oneOf("log.format", l.Format, "text", "json")
}
