package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSeedWindowFromConfig: devices.seed_window decides which stored
// readings seed the live state after a restart. A reading five minutes old
// is outside a 1m window (the device stays unknown) and inside a 10m one.
func TestSeedWindowFromConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs influxd")
	}
	ts := startSystem(t, "INFRAWATCH_DEVICES_SEED_WINDOW=1m", "INFRAWATCH_DEVICES_SEED_TIMEOUT=20s")
	secret := ts.createDevice("tc-old", "traffic_counter", "s1", "")
	c, err := connect(t, ts.mqtt, "tc-old", "tc-old", secret)
	require.NoError(t, err)
	old := time.Now().Add(-5 * time.Minute).UnixMilli()
	require.True(t, c.Publish("devices/tc-old/telemetry", 1, false,
		fmt.Sprintf(`{"ts":%d,"values":{"flow_vph":321}}`, old)).WaitTimeout(5*time.Second))
	require.Eventually(t, func() bool {
		return ts.influxQL(`SELECT count("flow_vph") FROM "traffic_counter" WHERE "device_id" = 'tc-old'`) == 1
	}, 10*time.Second, 20*time.Millisecond, "the reading is stored")
	c.Disconnect(0)

	ts.restart()
	after := ts.latest("tc-old")
	require.Equal(t, "unknown", after.Status, "a reading older than devices.seed_window seeds nothing")
	require.Empty(t, after.Metrics)

	ts.env = append(ts.env, "INFRAWATCH_DEVICES_SEED_WINDOW=10m") // the last one wins
	ts.restart()
	after = ts.latest("tc-old")
	require.NotEqual(t, "unknown", after.Status, "seeded: the reading is within devices.seed_window")
	require.Equal(t, 321.0, after.Metrics["flow_vph"].Value)
}
