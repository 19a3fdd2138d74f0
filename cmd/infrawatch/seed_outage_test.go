package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// TestOutageIgnoresAFastClock: ingest stores readings up to MaxFuture
// ahead, so one device with a fast clock must not make a long outage look
// like none (every other device would then go offline at the first sweep).
func TestOutageIgnoresAFastClock(t *testing.T) {
	stop := time.Now().Add(-4 * time.Minute) // when the last instance stopped storing
	rs := []telemetry.Reading{
		{DeviceID: "a", Time: stop.Add(-20 * time.Second)},
		{DeviceID: "a", Time: stop.Add(-5 * time.Second)},
		{DeviceID: "b", Time: stop.Add(-10 * time.Second)},
		{DeviceID: "c", Time: stop.Add(-2 * time.Second)},
		{DeviceID: "dead", Time: stop.Add(-3 * time.Hour)},  // quiet before the outage
		{DeviceID: "fast", Time: stop.Add(4 * time.Minute)}, // clock 4 min ahead
	}
	m, ok := fleetNewest(rs)
	require.True(t, ok)
	require.WithinDuration(t, stop.Add(-2*time.Second), m, time.Second)
	_, ok = fleetNewest(nil)
	require.False(t, ok)
}
