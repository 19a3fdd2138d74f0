package alerts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// TestFoldedDeviceReassigned: a device whose offline alert is folded into
// its gateway's is moved to a gateway that is up, and stays offline: the
// first gateway's outage no longer explains it, so it is notified (after
// the fold wait), not kept quiet for as long as the old gateway is down.
// Moved behind a gateway that is down, it is folded into that one's.
func TestFoldedDeviceReassigned(t *testing.T) {
	behind := func(id, gw string) *telemetry.Device {
		d := dev(id, "depot")
		d.GatewayID = gw
		return d
	}
	offline := func(id string, t time.Time) telemetry.StatusEvent {
		return telemetry.StatusEvent{DeviceID: id, Status: telemetry.StatusOffline, Time: t}
	}
	f := newFixture(t, nil, dev("gw1", "depot"), dev("gw2", "depot"), dev("gw3", "depot"),
		behind("s1", "gw1"), behind("s2", "gw1"), behind("s3", "gw1"))
	f.e.DeviceStatus(offline("gw1", at(0)))
	f.e.DeviceStatus(offline("gw3", at(0)))
	for _, id := range []string{"s1", "s2", "s3"} {
		f.e.DeviceStatus(offline(id, at(time.Second)))
	}
	f.e.Tick(at(time.Minute))
	require.ElementsMatch(t, []string{"firing:gw1", "firing:gw3"}, f.rec.transitions())

	f.reg.add(behind("s1", "gw2")) // up
	f.reg.add(behind("s2", "gw3")) // down
	for i := 2; i <= 60; i++ {
		f.e.Tick(at(time.Duration(i) * time.Minute))
	}
	assert.ElementsMatch(t, []string{"firing:gw1", "firing:gw3", "firing:s1"}, f.rec.transitions())
	byDev := map[string]Alert{}
	for _, a := range f.e.ListAlerts(AlertFilter{State: "firing"}) {
		byDev[a.DeviceID] = a
	}
	assert.Empty(t, byDev["s1"].SuppressedBy)
	assert.Equal(t, byDev["gw3"].ID, byDev["s2"].SuppressedBy)
	assert.Equal(t, byDev["gw1"].ID, byDev["s3"].SuppressedBy)
}
