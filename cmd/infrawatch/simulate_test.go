package main

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/configs"
	"github.com/infrawatch/infrawatch/simulators"
)

// TestSimulatedFleetOnline: the fleet provisions itself through the API of a
// real serve, every device logs in with its own secret, and every device
// (gateway-carried sensors included) appears online with its points stored.
func TestSimulatedFleetOnline(t *testing.T) {
	ts := startSystem(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- simulators.Run(ctx, simulators.Options{
			Devices: 60, APIURL: ts.api, Token: testAdminToken, BrokerURL: ts.mqtt,
			FleetYAML: configs.Fleet(), Seed: 7,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	var state struct {
		Devices []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"devices"`
	}
	require.Eventually(t, func() bool {
		if ts.do("GET", "/api/v1/state", testAdminToken, nil, &state) != 200 || len(state.Devices) < 60 {
			return false
		}
		for _, d := range state.Devices {
			if d.Status != "online" {
				return false
			}
		}
		return true
	}, 45*time.Second, 250*time.Millisecond, "every simulated device online")
	require.Len(t, state.Devices, 60)
	require.Positive(t, ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter`), "traffic points stored")
	m := scrape(t, ts.api)
	require.Zero(t, m[`infrawatch_broker_auth_failures_total{reason="bad_credentials"}`], "every device logs in with its own secret")
}
