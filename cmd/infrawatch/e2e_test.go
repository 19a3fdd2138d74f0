package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// publishFleet has `devices` devices each publish `perDevice` readings at
// QoS 1, one reading per message, each from its own connection with its own
// credentials. Reading i of device tc-NN has ts = base + i ms and values
// flow_vph = i, speed_kmh = NN + i/1000, so every point is distinct.
func publishFleet(t *testing.T, broker string, secrets map[string]string, perDevice int, base time.Time) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(secrets))
	for id, secret := range secrets {
		var d int
		_, _ = fmt.Sscanf(id, "tc-%d", &d)
		c, err := connect(t, broker, id, id, secret)
		require.NoError(t, err, "device %s connects", id)
		wg.Add(1)
		go func(id string, d int) {
			defer wg.Done()
			for i := 0; i < perDevice; i++ {
				ts := base.Add(time.Duration(i) * time.Millisecond).UnixMilli()
				payload := fmt.Sprintf(`{"ts":%d,"values":{"flow_vph":%d,"speed_kmh":%g,"congested":%t}}`,
					ts, i, float64(d)+float64(i)/1000, i%2 == 0)
				tok := c.Publish("devices/"+id+"/telemetry", 1, false, payload)
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					errs <- fmt.Errorf("device %s reading %d: PUBACK: %v", id, i, tok.Error())
					return
				}
			}
		}(id, d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// e2e is the spine's contract: 10,000 readings from 20 real paho clients
// end as exactly 10,000 points with the right measurement, tags, fields and
// times, and the live state and snapshot reflect them.
func e2e(t *testing.T, ts *testSystem) {
	const devices, perDevice = 20, 500
	secrets := map[string]string{}
	for i := 0; i < devices; i++ {
		id := fmt.Sprintf("tc-%02d", i)
		secrets[id] = ts.createDevice(id, "traffic_counter", fmt.Sprintf("corridor-%d", i%3), "")
	}
	base := time.Now().Add(-time.Minute).Truncate(time.Second)
	publishFleet(t, ts.mqtt, secrets, perDevice, base)

	require.Eventually(t, func() bool {
		return ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter`) == devices*perDevice
	}, 30*time.Second, 100*time.Millisecond, "all readings stored")
	// Exactly, not at least: wait a flush longer and count again.
	time.Sleep(300 * time.Millisecond)
	require.EqualValues(t, devices*perDevice, ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter`))
	require.EqualValues(t, devices*perDevice, ts.influxQL(`SELECT count(congested) FROM traffic_counter`))
	// Tags and time of one known point.
	require.EqualValues(t, 123, ts.influxQL(fmt.Sprintf(
		`SELECT flow_vph FROM traffic_counter WHERE device_id='tc-07' AND site='corridor-1' AND domain='roads' AND time = %dms`,
		base.Add(123*time.Millisecond).UnixMilli())))
	require.InDelta(t, 7.123, ts.influxQL(fmt.Sprintf(
		`SELECT speed_kmh FROM traffic_counter WHERE device_id='tc-07' AND time = %dms`, base.Add(123*time.Millisecond).UnixMilli())), 1e-9)

	// latest: the newest reading per metric, and the device online.
	var latest struct {
		Status  string `json:"status"`
		Metrics map[string]struct {
			Value any       `json:"value"`
			TS    time.Time `json:"ts"`
		} `json:"metrics"`
	}
	require.Equal(t, 200, ts.do("GET", "/api/v1/devices/tc-07/latest", testAdminToken, nil, &latest))
	require.Equal(t, "online", latest.Status)
	require.EqualValues(t, perDevice-1, latest.Metrics["flow_vph"].Value)
	require.Equal(t, base.Add((perDevice-1)*time.Millisecond).UnixMilli(), latest.Metrics["flow_vph"].TS.UnixMilli())

	var state struct {
		Devices []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Site   string `json:"site"`
		} `json:"devices"`
	}
	require.Equal(t, 200, ts.do("GET", "/api/v1/state?site=corridor-1", testAdminToken, nil, &state))
	require.Len(t, state.Devices, 7) // i%3 == 1 for i in 0..19
	for _, d := range state.Devices {
		require.Equal(t, "online", d.Status, d.ID)
		require.Equal(t, "corridor-1", d.Site)
	}

	// History: the planners' endpoint answers from the same points.
	var hist struct {
		Source string `json:"source"`
		Series []struct {
			Key    string `json:"key"`
			Points []struct {
				Value float64 `json:"value"`
			} `json:"points"`
		} `json:"series"`
	}
	require.Equal(t, 200, ts.do("GET", "/api/v1/history?device_id=tc-07&metric=flow_vph&start=-1h&every=1m&agg=count",
		testAdminToken, nil, &hist))
	require.Len(t, hist.Series, 1)
	var n float64
	for _, p := range hist.Series[0].Points {
		n += p.Value
	}
	require.EqualValues(t, perDevice, n, "history counts every reading of tc-07")

	// Accounting: every reading received was stored; none rejected or dropped.
	m := scrape(t, ts.api)
	require.EqualValues(t, devices*perDevice, m["infrawatch_ingest_readings_stored_total"])
	require.EqualValues(t, devices*perDevice, m["infrawatch_ingest_readings_received_total"])
}

func TestEndToEndEmbeddedBroker(t *testing.T) {
	ts := startSystem(t, "INFRAWATCH_INGEST_DEVICE_BURST=1000")
	e2e(t, ts)
}

func TestEndToEndMosquitto(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	ts := startSystem(t, "INFRAWATCH_MQTT_BROKER_URL="+mq.URL, "INFRAWATCH_INGEST_DEVICE_BURST=1000")
	require.Empty(t, ts.srv.MQTTAddr(), "no embedded broker with an external one configured")
	e2e(t, ts)
}

// TestDeviceIdentityEnforced: a wrong password is refused, and a device that
// publishes under another device's topic gets nothing stored.
func TestDeviceIdentityEnforced(t *testing.T) {
	ts := startSystem(t)
	secretA := ts.createDevice("dev-a", "traffic_counter", "s1", "")
	ts.createDevice("dev-b", "traffic_counter", "s1", "")

	_, err := connect(t, ts.mqtt, "dev-a", "dev-a", "wrong-secret-0123456789")
	require.Error(t, err, "wrong password refused")

	c, err := connect(t, ts.mqtt, "dev-a", "dev-a", secretA)
	require.NoError(t, err)
	tok := c.Publish("devices/dev-b/telemetry", 0, false, `{"values":{"flow_vph":999}}`)
	tok.WaitTimeout(5 * time.Second)
	// A reading of its own proves ingest is flowing, so the absence of
	// dev-b's point is not just slowness.
	c2, err := connect(t, ts.mqtt, "dev-a-2", "dev-a", secretA)
	if err == nil {
		c = c2
	} else {
		c, err = connect(t, ts.mqtt, "dev-a", "dev-a", secretA)
		require.NoError(t, err)
	}
	tok = c.Publish("devices/dev-a/telemetry", 1, false, `{"values":{"flow_vph":1}}`)
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.Eventually(t, func() bool {
		return ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter WHERE device_id='dev-a'`) == 1
	}, 10*time.Second, 50*time.Millisecond)
	require.Zero(t, ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter WHERE device_id='dev-b'`))
}

// TestServeBadConfigNamesEveryKey: serve refuses a bad file, naming each
// bad key, and exits non-zero.
func TestServeBadConfigNamesEveryKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`
influx:
  urll: http://127.0.0.1:8086
  flush_interval: 10 parsecs
mqtt:
  broker_url: "ftp://example"
log:
  level: loud
`), 0o644))
	var stderr strings.Builder
	err := run(context.Background(), []string{"serve", "--config", path}, &stderr, &stderr)
	require.Error(t, err)
	for _, key := range []string{"influx.urll", "influx.flush_interval", "mqtt.broker_url", "log.level"} {
		require.Contains(t, err.Error(), key)
	}
}

// scrape reads the Prometheus text exposition into name{labels} → value.
func scrape(t *testing.T, api string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(api + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	out := map[string]float64{}
	var body strings.Builder
	_, err = ioCopy(&body, resp)
	require.NoError(t, err)
	for _, line := range strings.Split(body.String(), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		if err := json.Unmarshal([]byte(line[i+1:]), &v); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// TestOversizedPayloads: through the embedded broker, a payload above
// ingest's limit but within the broker's packet limit is dead-lettered as
// too_large; one above the broker's packet limit disconnects the client
// before it is buffered. Neither stores anything.
func TestOversizedPayloads(t *testing.T) {
	ts := startSystem(t)
	secret := ts.createDevice("big-1", "traffic_counter", "s1", "")
	c, err := connect(t, ts.mqtt, "big-1", "big-1", secret)
	require.NoError(t, err)

	mid := `{"values":{"flow_vph":1},"pad":"` + strings.Repeat("x", 100<<10) + `"}`
	require.True(t, c.Publish("devices/big-1/telemetry", 1, false, mid).WaitTimeout(5*time.Second))
	require.Eventually(t, func() bool {
		return scrape(t, ts.api)[`infrawatch_ingest_rejected_total{reason="too_large"}`] == 1
	}, 10*time.Second, 50*time.Millisecond, "100 KiB payload dead-lettered as too_large")

	huge := strings.Repeat("x", 1<<20)
	c.Publish("devices/big-1/telemetry", 0, false, huge).WaitTimeout(5 * time.Second)
	require.Eventually(t, func() bool { return !c.IsConnectionOpen() }, 10*time.Second, 50*time.Millisecond,
		"a 1 MiB packet closes the connection")
	require.Zero(t, ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter WHERE device_id='big-1'`))
}
