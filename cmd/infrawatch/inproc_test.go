package main

import (
	"os"
	"testing"
)

// TestFaultServeKill9Embedded: with the embedded broker, ingest is in the
// same process as the broker, so nobody else holds a message for it. The
// broker sends a device's PUBACK only once ingest has stored or spooled the
// reading. serve is killed with SIGKILL mid-stream (2,500 readings/s) and
// restarted on the same port: every reading a device got a PUBACK for is
// in InfluxDB, exactly once per point; what was not acknowledged the
// devices publish again.
func TestFaultServeKill9Embedded(t *testing.T) {
	bin := os.Getenv("IW_KILL9_BIN") // an older build, to show it loses readings
	if bin == "" {
		bin = buildInfrawatch(t)
	}
	kill9UnderStream(t, bin, "")
}
