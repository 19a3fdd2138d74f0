package loadgen

import (
	"context"
	"time"

	"github.com/infrawatch/infrawatch/simulators"
)

// provisionConcurrency bounds the API requests in flight while provisioning.
const provisionConcurrency = simulators.ProvisionConcurrency

// provision registers ids as bench devices (expected interval in seconds)
// through the API with simulators.Provision and returns each one's MQTT
// secret: up to provisionConcurrency requests at once, transient failures
// retried, the first lasting error stopping the rest.
func provision(ctx context.Context, apiURL, token string, ids []string, interval int) (map[string]string, error) {
	devs := make([]simulators.DeviceSpec, len(ids))
	for i, id := range ids {
		devs[i] = benchDevice(id, interval)
	}
	return simulators.Provision(ctx, apiURL, token, devs)
}

// createDevice registers one bench device and returns its secret.
func createDevice(ctx context.Context, apiURL, token, id string, interval int) (string, error) {
	d := benchDevice(id, interval)
	return simulators.ProvisionDevice(ctx, apiURL, token, &d)
}

// benchDevice is a bench device as the registry is told of it: no
// location, metrics or tags, so that the registry holds as little per
// device as a real one can.
func benchDevice(id string, interval int) simulators.DeviceSpec {
	return simulators.DeviceSpec{ID: id, Name: "bench " + id, Domain: DeviceDomain, Type: DeviceType,
		Site: DeviceSite, ExpectedInterval: time.Duration(interval) * time.Second}
}

// benchRules are the alert rules every bench run evaluates, so that the
// figures include alert evaluation as an operator's system does it: a
// threshold with a hold time, a rate rule (which keeps a window per
// device) and an absence rule, all selecting every bench device and none
// firing on the bench's values.
func benchRules() []map[string]any {
	sel := map[string]any{"type": DeviceType, "site": DeviceSite}
	return []map[string]any{
		{"id": "bench-flow-high", "name": "bench: flow too high", "enabled": true, "selector": sel,
			"metric": "vehicle_flow_per_hour", "kind": "threshold", "op": ">", "value": 5000, "for": "30s",
			"severity": "warning", "message": "{{.DeviceID}} flow {{.Value}}"},
		{"id": "bench-speed-jump", "name": "bench: speed jumps", "enabled": true, "selector": sel,
			"metric": "mean_speed_km_per_hour", "kind": "rate", "value": 1e12,
			"severity": "info", "message": "{{.DeviceID}} speed changes fast"},
		{"id": "bench-silent", "name": "bench: silent", "enabled": true, "selector": sel,
			"kind": "absence", "for": "1h", "severity": "info", "message": "{{.DeviceID}} is silent"},
	}
}

// ensureBenchRules creates (or resets) benchRules through the API.
func ensureBenchRules(ctx context.Context, apiURL, token string) error {
	for _, r := range benchRules() {
		if err := simulators.EnsureRule(ctx, apiURL, token, r["id"].(string), r); err != nil {
			return err
		}
	}
	return nil
}
