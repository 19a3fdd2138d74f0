package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestServeStreamMaxSendRate: serve hands http.stream_max_send_rate to the
// stream hub, which exports it on /metrics. 123,456 is neither the config's
// default (300,000) nor the hub's own (100,000), so a hub built without
// the setting shows up here.
func TestServeStreamMaxSendRate(t *testing.T) {
	ts := startSystem(t, "INFRAWATCH_HTTP_STREAM_MAX_SEND_RATE=123456")
	require.Equal(t, 123456.0, scrape(t, ts.api)["infrawatch_stream_max_send_rate"])
}
