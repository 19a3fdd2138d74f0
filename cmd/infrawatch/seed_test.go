package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type apiLatest struct {
	Status   string     `json:"status"`
	LastSeen *time.Time `json:"last_seen"`
	Metrics  map[string]struct {
		Value any       `json:"value"`
		Time  time.Time `json:"ts"`
	} `json:"metrics"`
}

func (ts *testSystem) latest(id string) apiLatest {
	ts.t.Helper()
	var out apiLatest
	require.Equal(ts.t, http.StatusOK, ts.do("GET", "/api/v1/devices/"+id+"/latest", testAdminToken, nil, &out))
	return out
}

// TestRestartSeedsLiveState: a device that goes silent (no last will, and
// the embedded broker's retained status does not survive a restart) just
// before serve restarts is not left unknown: the restarted serve shows its
// last stored values and reading time, marks it stale then offline without
// any new reading, and raises device_offline and its absence alert.
func TestRestartSeedsLiveState(t *testing.T) {
	ts := startSystem(t, "INFRAWATCH_ALERTS_REORDER_WINDOW=0s", "INFRAWATCH_DEVICES_SWEEP_INTERVAL=100ms")
	secret := ts.createDevice("tc-dead", "traffic_counter", "s1", "") // expected_interval 1s
	absence := ts.createRule(map[string]any{
		"name": "silent 4s", "selector": map[string]any{"device_ids": []string{"tc-dead"}},
		"kind": "absence", "for": "4s", "severity": "critical",
	})
	c, err := connect(t, ts.mqtt, "tc-dead", "tc-dead", secret)
	require.NoError(t, err)
	require.True(t, c.Publish("devices/tc-dead/telemetry", 1, false,
		`{"values":{"flow_vph":1234,"speed_kmh":56.5,"door_open":true}}`).WaitTimeout(5*time.Second))
	require.Eventually(t, func() bool {
		return ts.influxQL(`SELECT count("flow_vph") FROM "traffic_counter" WHERE "device_id" = 'tc-dead'`) == 1
	}, 10*time.Second, 20*time.Millisecond, "the reading is stored")
	before := ts.latest("tc-dead")
	require.Equal(t, "online", before.Status)
	stored := before.Metrics["flow_vph"].Time
	// The device dies (a clean disconnect: no last will), and serve is
	// redeployed before its status or the absence rule could react.
	c.Disconnect(0)
	ts.restart()
	restarted := time.Now()

	after := ts.latest("tc-dead")
	require.NotEqual(t, "unknown", after.Status, "seeded from InfluxDB, not unknown")
	require.Equal(t, 1234.0, after.Metrics["flow_vph"].Value)
	require.Equal(t, 56.5, after.Metrics["speed_kmh"].Value)
	require.Equal(t, true, after.Metrics["door_open"].Value)
	require.True(t, stored.Equal(after.Metrics["flow_vph"].Time), "the reading's own time: %v vs %v", stored, after.Metrics["flow_vph"].Time)
	require.NotNil(t, after.LastSeen)
	require.True(t, stored.Equal(*after.LastSeen), "last_seen is the stored reading's time: %v vs %v", stored, *after.LastSeen)

	require.Eventually(t, func() bool { return ts.latest("tc-dead").Status == "stale" }, 10*time.Second, 50*time.Millisecond,
		"stale after 2× its interval without a reading")
	require.Eventually(t, func() bool { return ts.latest("tc-dead").Status == "offline" }, 10*time.Second, 50*time.Millisecond,
		"offline after 5× its interval")
	require.Eventually(t, func() bool {
		return hasRule(ts.alerts("?state=firing&device_id=tc-dead"), "device_offline")
	}, 10*time.Second, 50*time.Millisecond, "device_offline fires")
	require.Eventually(t, func() bool { return hasRule(ts.alerts("?state=firing&device_id=tc-dead"), absence) },
		15*time.Second, 50*time.Millisecond, "the absence rule fires without a new reading")
	require.GreaterOrEqual(t, time.Since(stored), 4*time.Second, "not before its `for`")
	t.Logf("absence fired %s after the restart", time.Since(restarted).Round(time.Millisecond))

	// The device comes back: online again, its offline alert resolved.
	c, err = connect(t, ts.mqtt, "tc-dead-2", "tc-dead", secret)
	require.NoError(t, err)
	require.True(t, c.Publish("devices/tc-dead/telemetry", 1, false, `{"values":{"flow_vph":99}}`).WaitTimeout(5*time.Second))
	require.Eventually(t, func() bool {
		l := ts.latest("tc-dead")
		return l.Status == "online" && l.Metrics["flow_vph"].Value == 99.0 && l.Metrics["speed_kmh"].Value == 56.5
	}, 10*time.Second, 50*time.Millisecond, "a new reading updates the seeded state")
	require.Eventually(t, func() bool { return !hasRule(ts.alerts("?state=firing&device_id=tc-dead"), "device_offline") },
		10*time.Second, 50*time.Millisecond, "device_offline resolves")
}

func hasRule(as []apiAlert, ruleID string) bool {
	for _, a := range as {
		if a.RuleID == ruleID {
			return true
		}
	}
	return false
}
