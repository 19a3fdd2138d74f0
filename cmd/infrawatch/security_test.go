package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/configs"
	"github.com/infrawatch/infrawatch/internal/testenv"
)

// secCreateToken creates an API token through the API and returns its secret.
func (ts *testSystem) secCreateToken(name, role string) string {
	ts.t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	require.Equal(ts.t, http.StatusCreated, ts.do("POST", "/api/v1/tokens", testAdminToken,
		map[string]string{"name": name, "role": role}, &out))
	require.NotEmpty(ts.t, out.Token)
	return out.Token
}

// secRaw sends a raw body and returns the status.
func secRaw(t *testing.T, client *http.Client, method, url, token string, body []byte, chunked bool) int {
	t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = io.MultiReader(bytes.NewReader(body)) // unknown length: sent chunked
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if chunked {
		req.ContentLength = -1
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// TestSecretsStoredOnlyAsHashes: after devices (generated and chosen
// secrets, a rotated one) and API tokens are created, neither the SQLite
// database nor its WAL holds any secret or token in clear.
func TestSecretsStoredOnlyAsHashes(t *testing.T) {
	ts := startSystem(t)
	secrets := []string{testAdminToken}
	secrets = append(secrets, ts.createDevice("hash-1", "traffic_counter", "s1", ""))
	chosen := "installer-chosen-secret-0123456789"
	var created struct {
		Secret string `json:"secret"`
	}
	require.Equal(t, http.StatusCreated, ts.do("POST", "/api/v1/devices", testAdminToken, map[string]any{
		"id": "hash-2", "name": "hash-2", "domain": "roads", "type": "traffic_counter", "site": "s1",
		"location": map[string]float64{"lat": 52, "lon": 4}, "expected_interval": 1, "secret": chosen,
	}, &created))
	require.Equal(t, chosen, created.Secret)
	secrets = append(secrets, chosen)
	rotated := "rotated-secret-abcdefghijklmnop"
	require.Equal(t, http.StatusOK, ts.do("PUT", "/api/v1/devices/hash-2", testAdminToken, map[string]any{
		"name": "hash-2", "domain": "roads", "type": "traffic_counter", "site": "s1",
		"location": map[string]float64{"lat": 52, "lon": 4}, "expected_interval": 1, "secret": rotated,
	}, nil))
	secrets = append(secrets, rotated)
	for _, role := range []string{"viewer", "operator", "admin"} {
		secrets = append(secrets, ts.secCreateToken("tok-"+role, role))
	}
	// The secrets work, so they are what was stored (as hashes).
	_, err := connect(t, ts.mqtt, "hash-2", "hash-2", rotated)
	require.NoError(t, err)

	cfg, err := configs.Load("", ts.env)
	require.NoError(t, err)
	check := func(when string) {
		files, _ := filepath.Glob(cfg.Devices.DBPath + "*") // the db, -wal, -shm
		require.NotEmpty(t, files)
		var all []byte
		for _, f := range files {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			all = append(all, b...)
		}
		require.True(t, bytes.Contains(all, []byte("hash-2")), "%s: the database holds the devices", when)
		for _, s := range secrets {
			require.False(t, bytes.Contains(all, []byte(s)), "%s: secret %.6s… in clear in %v", when, s, files)
		}
	}
	check("while serving")
	ts.srv.Close()
	check("after shutdown")
}

// TestAuthFailuresLimitedEndToEnd: through serve, an address guessing API
// tokens gets 429 with Retry-After after the burst (also for a right token),
// and an MQTT username guessed too often is refused even with its secret,
// while another device from the same address still connects.
func TestAuthFailuresLimitedEndToEnd(t *testing.T) {
	ts := startSystem(t, "INFRAWATCH_AUTH_FAILURE_BURST=5", "INFRAWATCH_AUTH_FAILURES_PER_MINUTE=1")
	secretA := ts.createDevice("rl-a", "traffic_counter", "s1", "")
	secretB := ts.createDevice("rl-b", "traffic_counter", "s1", "")
	viewer := ts.secCreateToken("rl-viewer", "viewer")

	for i := 0; i < 50; i++ { // successes cost nothing
		require.Equal(t, http.StatusOK, ts.do("GET", "/api/v1/devices", viewer, nil, nil))
	}
	for _, id := range []string{"rl-a", "rl-b"} { // neither do successful MQTT logins
		for i := 0; i < 8; i++ {
			c, err := connect(t, ts.mqtt, id, id, map[string]string{"rl-a": secretA, "rl-b": secretB}[id])
			require.NoError(t, err)
			c.Disconnect(0)
		}
	}
	for i := 0; i < 5; i++ {
		require.Equal(t, http.StatusUnauthorized, ts.do("GET", "/api/v1/devices", fmt.Sprintf("guess-%d", i), nil, nil))
	}
	req, err := http.NewRequest("GET", ts.api+"/api/v1/devices", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+viewer)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))

	for i := 0; i < 5; i++ {
		_, err := connect(t, ts.mqtt, "rl-a", "rl-a", "wrong-secret-0123456789")
		require.Error(t, err)
	}
	_, err = connect(t, ts.mqtt, "rl-a", "rl-a", secretA)
	require.Error(t, err, "limited: even the right secret is refused for now")
	_, err = connect(t, ts.mqtt, "rl-b", "rl-b", secretB)
	require.NoError(t, err, "another device behind the same address is not locked out")
	m := scrape(t, ts.api)
	require.EqualValues(t, 1, m[`infrawatch_http_auth_rate_limited_total`])
	// paho retries a refused CONNECT with MQTT 3.1, so each refused
	// connect counts twice.
	require.GreaterOrEqual(t, m[`infrawatch_broker_auth_failures_total{reason="rate_limited"}`], 1.0)
}

// TestBodyLimitEndToEnd: a body over http.max_body_bytes gets 413, declared
// or streamed without a length.
func TestBodyLimitEndToEnd(t *testing.T) {
	ts := startSystem(t, "INFRAWATCH_HTTP_MAX_BODY_BYTES=4096")
	big := []byte(`{"id":"big-1","name":"` + strings.Repeat("x", 8000) + `"}`)
	require.Equal(t, http.StatusRequestEntityTooLarge, secRaw(t, http.DefaultClient, "POST", ts.api+"/api/v1/devices", testAdminToken, big, false))
	require.Equal(t, http.StatusRequestEntityTooLarge, secRaw(t, http.DefaultClient, "POST", ts.api+"/api/v1/devices", testAdminToken, big, true))
	require.Equal(t, http.StatusNotFound, ts.do("GET", "/api/v1/devices/big-1", testAdminToken, nil, nil))
}

// TestIdentitiesRefusedEndToEnd: ids that could act as a topic wildcard or
// level, or break line protocol, never get in: the API refuses them with
// 400 (device and gateway ids), and the broker refuses them as MQTT
// username or client id.
func TestIdentitiesRefusedEndToEnd(t *testing.T) {
	ts := startSystem(t)
	secret := ts.createDevice("id-ok", "traffic_counter", "s1", "")
	bad := []string{"", "a#", "a+b", "a/b", "a,b", "a=b", "a b", "a\x00b", "a\xffb", "é", "a\nb", strings.Repeat("a", 65), "#", "+", "$SYS"}
	for _, id := range bad {
		for _, field := range []string{"id", "gateway_id"} {
			t.Run(fmt.Sprintf("api %s %q", field, id), func(t *testing.T) {
				if field == "gateway_id" && id == "" {
					t.Skip("an empty gateway_id means none")
				}
				doc := fmt.Sprintf(`{"id":%s,"name":"x","domain":"roads","type":"traffic_counter","site":"s1","location":{"lat":52,"lon":4},"expected_interval":1}`, rawJSONString(id))
				if field == "gateway_id" {
					doc = fmt.Sprintf(`{"id":"gw-child","name":"x","domain":"roads","type":"traffic_counter","site":"s1","location":{"lat":52,"lon":4},"expected_interval":1,"gateway_id":%s}`, rawJSONString(id))
				}
				require.Equal(t, http.StatusBadRequest, secRaw(t, http.DefaultClient, "POST", ts.api+"/api/v1/devices", testAdminToken, []byte(doc), false))
			})
		}
		if id == "" {
			continue // paho would send an empty client id; covered by the broker's own tests
		}
		t.Run(fmt.Sprintf("mqtt %q", id), func(t *testing.T) {
			_, err := connect(t, ts.mqtt, "id-ok", id, secret)
			require.Error(t, err, "username %q", id)
			_, err = connect(t, ts.mqtt, id, "id-ok", secret)
			require.Error(t, err, "client id %q", id)
		})
	}
	var list struct {
		Devices []map[string]any `json:"devices"`
	}
	require.Equal(t, http.StatusOK, ts.do("GET", "/api/v1/devices", testAdminToken, nil, &list))
	require.Len(t, list.Devices, 1, "only the good device exists")
	_, err := connect(t, ts.mqtt, "id-ok", "id-ok", secret)
	require.NoError(t, err, "the right identity still connects")
}

// rawJSONString quotes s for JSON without fixing invalid UTF-8 (which
// encoding/json would replace), so the server sees the bytes as sent.
func rawJSONString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// TestTLSEndToEnd: with certificates configured, the API answers HTTPS
// only, the broker speaks MQTT over TLS only, ingest reaches it over TLS,
// and a device's reading sent over TLS is stored.
func TestTLSEndToEnd(t *testing.T) {
	certFile, keyFile, pool := testenv.TLSCert(t)
	influx := testenv.Influx(t)
	ts := &testSystem{t: t, influx: influx, db: testenv.NewDB(t)}
	httpPort, mqttPort := testenv.MustFreePort(t), testenv.MustFreePort(t)
	ts.env = []string{
		fmt.Sprintf("INFRAWATCH_HTTP_LISTEN=127.0.0.1:%d", httpPort),
		fmt.Sprintf("INFRAWATCH_BROKER_LISTEN=127.0.0.1:%d", mqttPort),
		"INFRAWATCH_INFLUX_URL=" + influx.URL,
		"INFRAWATCH_INFLUX_BUCKET=" + ts.db,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(t.TempDir(), "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(t.TempDir(), "spool"),
		"INFRAWATCH_AUTH_ADMIN_TOKEN=" + testAdminToken,
		"INFRAWATCH_HTTP_TLS_CERT=" + certFile, "INFRAWATCH_HTTP_TLS_KEY=" + keyFile,
		"INFRAWATCH_BROKER_TLS_CERT=" + certFile, "INFRAWATCH_BROKER_TLS_KEY=" + keyFile,
	}
	cfg, err := configs.Load("", ts.env)
	require.NoError(t, err)
	srv, err := startServer(context.Background(), cfg, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	require.NoError(t, err)
	t.Cleanup(srv.Close)

	https := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := fmt.Sprintf("https://127.0.0.1:%d", httpPort)
	require.Eventually(t, func() bool {
		resp, err := https.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK // ready: ingest is connected over TLS
	}, 20*time.Second, 50*time.Millisecond)

	// Plain HTTP gets no API: Go's TLS server answers it with a bare 400.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/devices", httpPort))
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.NotContains(t, string(body), "devices")
	}

	// Create a device over HTTPS.
	doc, _ := json.Marshal(map[string]any{"id": "tls-1", "name": "tls-1", "domain": "roads", "type": "traffic_counter",
		"site": "s1", "location": map[string]float64{"lat": 52, "lon": 4}, "expected_interval": 1})
	req, _ := http.NewRequest("POST", base+"/api/v1/devices", bytes.NewReader(doc))
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err = https.Do(req)
	require.NoError(t, err)
	var created struct {
		Secret string `json:"secret"`
	}
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&created))
	resp.Body.Close()

	mqttAddr := fmt.Sprintf("127.0.0.1:%d", mqttPort)
	// Plain MQTT is refused.
	_, err = connect(t, "tcp://"+mqttAddr, "tls-1", "tls-1", created.Secret)
	require.Error(t, err, "plaintext MQTT must fail")
	// A client that does not trust the certificate is refused too.
	_, err = secConnectTLS(t, "ssl://"+mqttAddr, "tls-1", created.Secret, x509.NewCertPool())
	require.Error(t, err)

	c, err := secConnectTLS(t, "ssl://"+mqttAddr, "tls-1", created.Secret, pool)
	require.NoError(t, err)
	tok := c.Publish("devices/tls-1/telemetry", 1, false, `{"values":{"flow_vph":42}}`)
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	require.Eventually(t, func() bool {
		return ts.influxQL(`SELECT last(flow_vph) FROM traffic_counter WHERE device_id='tls-1'`) == 42
	}, 10*time.Second, 50*time.Millisecond, "the reading sent over TLS is stored")
}

func secConnectTLS(t *testing.T, broker, id, secret string, pool *x509.CertPool) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(id).SetUsername(id).SetPassword(secret).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect %s: timeout", id)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// TestNoSecretsInLogs runs serve with debug logging through a whole
// session (devices and tokens created, API and MQTT logins good and bad,
// the stream with ?token=, readings, shutdown) and finds no device secret,
// API token, admin token or MQTT password in the log.
func TestNoSecretsInLogs(t *testing.T) {
	influx := testenv.Influx(t)
	ts := &testSystem{t: t, influx: influx, db: testenv.NewDB(t)}
	ts.env = []string{
		"INFRAWATCH_HTTP_LISTEN=127.0.0.1:0",
		fmt.Sprintf("INFRAWATCH_BROKER_LISTEN=127.0.0.1:%d", testenv.MustFreePort(t)),
		"INFRAWATCH_INFLUX_URL=" + influx.URL,
		"INFRAWATCH_INFLUX_BUCKET=" + ts.db,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(t.TempDir(), "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(t.TempDir(), "spool"),
		"INFRAWATCH_AUTH_ADMIN_TOKEN=" + testAdminToken,
		"INFRAWATCH_ALERTS_WEBHOOK_SECRET=webhook-secret-0123456789",
		"INFRAWATCH_LOG_LEVEL=debug",
	}
	cfg, err := configs.Load("", ts.env)
	require.NoError(t, err)
	logs := &testenv.LogBuffer{}
	logger := newLogger(cfg.Log, logs)
	logger.Info("config", "config", cfg.Redacted())
	srv, err := startServer(context.Background(), cfg, logger)
	require.NoError(t, err)
	ts.srv = srv
	t.Cleanup(srv.Close)
	ts.api = "http://" + srv.HTTPAddr()
	ts.mqtt = "tcp://" + srv.MQTTAddr()
	require.Eventually(t, func() bool { return ts.do("GET", "/readyz", "", nil, nil) == http.StatusOK }, 20*time.Second, 50*time.Millisecond)

	secrets := []string{testAdminToken, "webhook-secret-0123456789"}
	s1 := ts.createDevice("log-1", "traffic_counter", "s1", "")
	secrets = append(secrets, s1)
	viewer := ts.secCreateToken("log-viewer", "viewer")
	secrets = append(secrets, viewer)
	// The service identity's MQTT password ingest logs in with.
	secrets = append(secrets, srv.servicePass)

	require.Equal(t, http.StatusOK, ts.do("GET", "/api/v1/devices", viewer, nil, nil))
	require.Equal(t, http.StatusUnauthorized, ts.do("GET", "/api/v1/devices", "wrong-token-abcdefghij", nil, nil))
	secrets = append(secrets, "wrong-token-abcdefghij")
	resp, err := http.Get(ts.api + "/api/v1/stream?token=" + viewer)
	if err == nil {
		resp.Body.Close()
	}
	c, err := connect(t, ts.mqtt, "log-1", "log-1", s1)
	require.NoError(t, err)
	require.True(t, c.Publish("devices/log-1/telemetry", 1, false, `{"values":{"flow_vph":1}}`).WaitTimeout(5*time.Second))
	_, err = connect(t, ts.mqtt, "log-1", "log-1", "wrong-secret-abcdefghij")
	require.Error(t, err)
	secrets = append(secrets, "wrong-secret-abcdefghij")
	_, err = connect(t, ts.mqtt, "log-tok", "token", viewer)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter WHERE device_id='log-1'`) == 1
	}, 10*time.Second, 50*time.Millisecond)
	srv.Close()

	out := logs.String()
	require.Contains(t, out, "http request", "debug logging was on")
	require.Contains(t, out, "mqtt connection refused", "the refused login was logged")
	for _, s := range secrets {
		require.NotEmpty(t, s)
		require.NotContains(t, out, s)
	}
}
