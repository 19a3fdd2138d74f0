package main

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

type apiAlert struct {
	ID       string `json:"id"`
	RuleID   string `json:"rule_id"`
	DeviceID string `json:"device_id"`
	State    string `json:"state"`
	AckedBy  string `json:"acked_by"`
	AckNote  string `json:"ack_note"`
}

func (ts *testSystem) alerts(query string) []apiAlert {
	ts.t.Helper()
	var out struct {
		Alerts []apiAlert `json:"alerts"`
	}
	require.Equal(ts.t, http.StatusOK, ts.do("GET", "/api/v1/alerts"+query, testAdminToken, nil, &out))
	return out.Alerts
}

func (ts *testSystem) createRule(body map[string]any) string {
	ts.t.Helper()
	var rule struct {
		ID string `json:"id"`
	}
	require.Equal(ts.t, http.StatusCreated, ts.do("POST", "/api/v1/rules", testAdminToken, body, &rule))
	return rule.ID
}

// TestAlertsSurviveServeRestart: an open, acknowledged alert is still open
// and acknowledged after serve restarts, and a pending `for` timer started
// before the restart still fires after it, without a new reading.
func TestAlertsSurviveServeRestart(t *testing.T) {
	ts := startSystem(t, "INFRAWATCH_ALERTS_REORDER_WINDOW=0s")
	secret := ts.createDevice("tc-r", "traffic_counter", "s1", "")
	ts.createRule(map[string]any{
		"name": "flow high", "selector": map[string]any{"device_ids": []string{"tc-r"}},
		"metric": "flow_vph", "kind": "threshold", "op": ">", "value": 3000, "severity": "critical",
	})
	slow := ts.createRule(map[string]any{
		"name": "speed low for 4s", "selector": map[string]any{"device_ids": []string{"tc-r"}},
		"metric": "speed_kmh", "kind": "threshold", "op": "<", "value": 10, "for": "4s", "severity": "warning",
	})
	c, err := connect(t, ts.mqtt, "tc-r", "tc-r", secret)
	require.NoError(t, err)
	require.True(t, c.Publish("devices/tc-r/telemetry", 1, false, `{"values":{"flow_vph":3500}}`).WaitTimeout(5*time.Second))
	require.Eventually(t, func() bool { return len(ts.alerts("?state=firing&device_id=tc-r")) == 1 }, 10*time.Second, 50*time.Millisecond)
	id := ts.alerts("?state=firing&device_id=tc-r")[0].ID
	require.Equal(t, http.StatusOK, ts.do("POST", "/api/v1/alerts/"+id+"/ack", testAdminToken, map[string]string{"note": "crew on site"}, nil))

	// Start the 4 s `for` of the second rule, then restart within it.
	started := time.Now()
	require.True(t, c.Publish("devices/tc-r/telemetry", 1, false, `{"values":{"speed_kmh":4}}`).WaitTimeout(5*time.Second))
	require.Eventually(t, func() bool {
		for _, a := range ts.alerts("?state=pending&device_id=tc-r") {
			if a.RuleID == slow {
				return true
			}
		}
		return false
	}, 5*time.Second, 20*time.Millisecond, "speed rule pending")
	c.Disconnect(100)
	ts.restart()

	acked := ts.alerts("?state=acknowledged&device_id=tc-r")
	require.Len(t, acked, 1, "the acknowledged alert survives the restart")
	require.Equal(t, id, acked[0].ID)
	require.Equal(t, "crew on site", acked[0].AckNote)
	require.Eventually(t, func() bool {
		for _, a := range ts.alerts("?state=firing&device_id=tc-r") {
			if a.RuleID == slow {
				return true
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "the pending for-timer fires after the restart")
	require.GreaterOrEqual(t, time.Since(started), 4*time.Second, "not before its `for`")
}

// TestReadingToAlertEventLatency measures reading → websocket alert event
// latency through the real system (MQTT in, alert engine, stream out) and
// logs p50/p99; BENCHMARKS.md records the figures. It asserts only that
// every alert arrives, since speed is judged by the numbers, not a timer.
func TestReadingToAlertEventLatency(t *testing.T) {
	ts := startSystem(t, "INFRAWATCH_ALERTS_REORDER_WINDOW=0s", "INFRAWATCH_INGEST_DEVICE_BURST=100000")
	secret := ts.createDevice("tc-l", "traffic_counter", "s1", "")
	ts.createRule(map[string]any{
		"name": "flow high", "selector": map[string]any{"device_ids": []string{"tc-l"}},
		"metric": "flow_vph", "kind": "threshold", "op": ">", "value": 3000, "severity": "info",
	})
	ws, _, err := websocket.DefaultDialer.Dial(strings.Replace(ts.api, "http", "ws", 1)+"/api/v1/stream?token="+testAdminToken, nil)
	require.NoError(t, err)
	defer ws.Close()
	require.NoError(t, ws.WriteJSON(map[string]any{"type": "subscribe", "events": []string{"alert"}}))
	events := make(chan string, 1024)
	go func() {
		for {
			var m struct {
				Type       string `json:"type"`
				Transition string `json:"transition"`
				Events     []struct {
					Type       string `json:"type"`
					Transition string `json:"transition"`
				} `json:"events"`
			}
			if ws.ReadJSON(&m) != nil {
				close(events)
				return
			}
			if m.Type == "alert" {
				events <- m.Transition
			}
			for _, e := range m.Events {
				if e.Type == "alert" {
					events <- e.Transition
				}
			}
		}
	}()
	c, err := connect(t, ts.mqtt, "tc-l", "tc-l", secret)
	require.NoError(t, err)
	const rounds = 100
	var lat []time.Duration
	for i := 0; i < rounds; i++ {
		sent := time.Now()
		require.True(t, c.Publish("devices/tc-l/telemetry", 1, false, `{"values":{"flow_vph":3500}}`).WaitTimeout(5*time.Second))
		waitTransition(t, events, "firing")
		lat = append(lat, time.Since(sent))
		require.True(t, c.Publish("devices/tc-l/telemetry", 1, false, `{"values":{"flow_vph":100}}`).WaitTimeout(5*time.Second))
		waitTransition(t, events, "resolved")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("reading → websocket alert event over %d alerts: p50 %v, p99 %v, max %v",
		rounds, lat[rounds/2], lat[rounds*99/100], lat[rounds-1])
}

func waitTransition(t *testing.T, events <-chan string, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got, ok := <-events:
			require.True(t, ok, "stream closed")
			if got == want {
				return
			}
		case <-deadline:
			require.FailNow(t, fmt.Sprintf("no %s alert event within 10s", want))
		}
	}
}
