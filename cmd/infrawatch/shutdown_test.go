package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// TestGracefulShutdownLosesNothing builds the binary, runs serve with its
// embedded broker, and sends SIGTERM while a device publishes QoS 1
// readings with many in flight. Every reading the broker acknowledged
// (PUBACK) must be in InfluxDB afterwards, and serve must exit 0 within
// http.shutdown_timeout.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	influx := testenv.Influx(t)
	db := testenv.NewDB(t)
	bin := filepath.Join(t.TempDir(), "infrawatch")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	require.NoError(t, build.Run())

	httpPort, mqttPort := testenv.MustFreePort(t), testenv.MustFreePort(t)
	const deadline = 8 * time.Second
	var logs testenv.LogBuffer
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("INFRAWATCH_HTTP_LISTEN=127.0.0.1:%d", httpPort),
		fmt.Sprintf("INFRAWATCH_BROKER_LISTEN=127.0.0.1:%d", mqttPort),
		"INFRAWATCH_INFLUX_URL="+influx.URL,
		"INFRAWATCH_INFLUX_BUCKET="+db,
		"INFRAWATCH_DEVICES_DB_PATH="+filepath.Join(t.TempDir(), "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR="+filepath.Join(t.TempDir(), "spool"),
		"INFRAWATCH_AUTH_ADMIN_TOKEN="+testAdminToken,
		"INFRAWATCH_HTTP_SHUTDOWN_TIMEOUT="+deadline.String(),
		"INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000000",
		"INFRAWATCH_INGEST_DEVICE_BURST=1000000",
		// Large batches and a slow flush: at SIGTERM much is still queued.
		"INFRAWATCH_INFLUX_FLUSH_INTERVAL=500ms",
	)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
		if t.Failed() {
			t.Log(logs.String())
		}
	})

	api := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	require.Eventually(t, func() bool {
		resp, err := http.Get(api + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "serve never became ready")

	doc, _ := json.Marshal(map[string]any{"id": "sd-1", "name": "sd-1", "domain": "roads", "type": "traffic_counter",
		"site": "s1", "location": map[string]float64{"lat": 52, "lon": 4}, "expected_interval": 1})
	req, _ := http.NewRequest("POST", api+"/api/v1/devices", bytes.NewReader(doc))
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var created struct {
		Secret string `json:"secret"`
	}
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&created))
	resp.Body.Close()

	// A dashboard's websocket, to see it closed with a reason.
	ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://127.0.0.1:%d/api/v1/stream?token=%s", httpPort, testAdminToken), nil)
	require.NoError(t, err)
	defer ws.Close()
	require.NoError(t, ws.WriteJSON(map[string]any{"type": "subscribe", "events": []string{"status"}}))
	wsClosed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				wsClosed <- err
				return
			}
		}
	}()

	o := paho.NewClientOptions().AddBroker(fmt.Sprintf("tcp://127.0.0.1:%d", mqttPort)).
		SetClientID("sd-1").SetUsername("sd-1").SetPassword(created.Secret).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetWriteTimeout(5 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	// Publish with up to 64 readings in flight until the broker goes away;
	// record which ones were acknowledged.
	base := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	var mu sync.Mutex
	acked := map[int]bool{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		window := make(chan struct{}, 64)
		var wg sync.WaitGroup
		defer wg.Wait()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case window <- struct{}{}:
			}
			payload := fmt.Sprintf(`{"ts":%d,"values":{"flow_vph":%d}}`, base.Add(time.Duration(i)*time.Millisecond).UnixMilli(), i)
			pt := c.Publish("devices/sd-1/telemetry", 1, false, payload)
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				defer func() { <-window }()
				if pt.WaitTimeout(10*time.Second) && pt.Error() == nil {
					mu.Lock()
					acked[i] = true
					mu.Unlock()
				}
			}(i)
			if !c.IsConnectionOpen() {
				return
			}
		}
	}()

	time.Sleep(1500 * time.Millisecond)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	require.Positive(t, before, "readings are flowing before the signal")
	start := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	var exitErr error
	select {
	case exitErr = <-exited:
	case <-time.After(deadline + 5*time.Second):
		t.Fatalf("serve did not exit within %s of SIGTERM", deadline+5*time.Second)
	}
	elapsed := time.Since(start)
	close(stop)
	<-done
	c.Disconnect(0)
	require.NoError(t, exitErr, "exit status 0")
	require.Less(t, elapsed, deadline, "exit within http.shutdown_timeout")
	t.Logf("SIGTERM → exit in %s; %d readings acknowledged (%d before the signal)", elapsed, len(acked), before)

	stored := influxValues(t, influx.URL, db, `SELECT flow_vph FROM traffic_counter WHERE device_id='sd-1'`)
	var missing []int
	for i := range acked {
		if !stored[i] {
			missing = append(missing, i)
		}
	}
	require.Empty(t, missing, "%d of %d acknowledged readings were lost (stored %d)", len(missing), len(acked), len(stored))

	select {
	case err := <-wsClosed:
		require.True(t, websocket.IsCloseError(err, websocket.CloseGoingAway), "websocket closed with 1001 going away, got %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("websocket not closed at shutdown")
	}
}

// influxValues returns the set of integer values of the query's first
// column after time.
func influxValues(t *testing.T, influxURL, db, q string) map[int]bool {
	t.Helper()
	set := map[int]bool{}
	for _, v := range influxRows(t, influxURL, db, q) {
		if f, ok := v[1].(float64); ok {
			set[int(f)] = true
		}
	}
	return set
}
