package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
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

// TestMain stops the influxd shared by this package's tests.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopShared()
	os.Exit(code)
}

const testAdminToken = "test-admin-token-0123456789"

// testSystem is a real `infrawatch serve` (in-process) on free loopback
// ports, with a real influxd behind it.
type testSystem struct {
	t      *testing.T
	srv    *server
	api    string // http://127.0.0.1:port
	mqtt   string // tcp://127.0.0.1:port of the broker devices use
	influx *testenv.InfluxServer
	db     string
	env    []string
}

// startSystem starts serve with the given extra INFRAWATCH_* variables.
func startSystem(t *testing.T, extraEnv ...string) *testSystem {
	t.Helper()
	influx := testenv.Influx(t)
	ts := &testSystem{t: t, influx: influx, db: testenv.NewDB(t)}
	ts.env = append([]string{
		"INFRAWATCH_HTTP_LISTEN=127.0.0.1:0",
		fmt.Sprintf("INFRAWATCH_BROKER_LISTEN=127.0.0.1:%d", testenv.MustFreePort(t)),
		"INFRAWATCH_INFLUX_URL=" + influx.URL,
		"INFRAWATCH_INFLUX_BUCKET=" + ts.db,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(t.TempDir(), "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(t.TempDir(), "spool"),
		"INFRAWATCH_AUTH_ADMIN_TOKEN=" + testAdminToken,
		"INFRAWATCH_LOG_LEVEL=warn",
	}, extraEnv...)
	ts.start()
	return ts
}

func (ts *testSystem) start() {
	t := ts.t
	t.Helper()
	cfg, err := configs.Load("", ts.env)
	require.NoError(t, err)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := startServer(context.Background(), cfg, logger)
	require.NoError(t, err)
	ts.srv = srv
	t.Cleanup(srv.Close)
	ts.api = "http://" + srv.HTTPAddr()
	if srv.MQTTAddr() != "" {
		ts.mqtt = "tcp://" + srv.MQTTAddr()
	} else {
		ts.mqtt = cfg.MQTT.BrokerURL
	}
	require.Eventually(t, func() bool {
		return ts.do("GET", "/readyz", "", nil, nil) == http.StatusOK
	}, 20*time.Second, 50*time.Millisecond, "serve never became ready")
}

// restart stops serve and starts it again on the same registry and InfluxDB.
func (ts *testSystem) restart() {
	ts.srv.Close()
	for i, e := range ts.env {
		if strings.HasPrefix(e, "INFRAWATCH_HTTP_LISTEN=") {
			ts.env[i] = "INFRAWATCH_HTTP_LISTEN=" + ts.srv.HTTPAddr() // keep the URL clients use
		}
	}
	ts.start()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// do sends an API request as the admin (or token) and decodes the answer
// into out when given; it returns the status.
func (ts *testSystem) do(method, path, token string, body, out any) int {
	ts.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(ts.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, ts.api+path, rd)
	require.NoError(ts.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(ts.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(ts.t, err)
	if out != nil && resp.StatusCode < 300 {
		require.NoError(ts.t, json.Unmarshal(raw, out), "body: %s", raw)
	}
	return resp.StatusCode
}

// createDevice registers a device through the API and returns its secret.
func (ts *testSystem) createDevice(id, typ, site, gateway string) string {
	ts.t.Helper()
	var created struct {
		Secret string `json:"secret"`
	}
	body := map[string]any{
		"id": id, "name": id, "domain": "roads", "type": typ, "site": site,
		"location": map[string]float64{"lat": 52.37, "lon": 4.89}, "expected_interval": 1,
	}
	if gateway != "" {
		body["gateway_id"] = gateway
	}
	status := ts.do("POST", "/api/v1/devices", testAdminToken, body, &created)
	require.Equal(ts.t, http.StatusCreated, status)
	require.NotEmpty(ts.t, created.Secret)
	return created.Secret
}

// connect opens an MQTT connection as a device (or any user).
func connect(t *testing.T, broker, clientID, user, pass string) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(clientID).
		SetUsername(user).SetPassword(pass).SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).SetCleanSession(true)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect %s: timeout", clientID)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// influxQL runs an InfluxQL query against the test database and returns the
// first value of the first series' first row (e.g. a count), or 0.
func (ts *testSystem) influxQL(q string) float64 {
	ts.t.Helper()
	rows := influxRows(ts.t, ts.influx.URL, ts.db, q)
	if len(rows) == 0 {
		return 0
	}
	v, _ := rows[0][1].(float64)
	return v
}

// influxRows runs an InfluxQL query and returns the rows of all series of
// its first result.
func influxRows(t testing.TB, influxURL, db, q string) [][]any {
	t.Helper()
	resp, err := http.PostForm(influxURL+"/query", url.Values{"db": {db}, "q": {q}})
	require.NoError(t, err)
	defer resp.Body.Close()
	var out struct {
		Results []struct {
			Series []struct {
				Values [][]any `json:"values"`
			} `json:"series"`
			Error string `json:"error"`
		} `json:"results"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	require.NotEmpty(t, out.Results)
	require.Empty(t, out.Results[0].Error, "query %s", q)
	var rows [][]any
	for _, s := range out.Results[0].Series {
		rows = append(rows, s.Values...)
	}
	return rows
}

func ioCopy(w io.Writer, resp *http.Response) (int64, error) { return io.Copy(w, resp.Body) }
