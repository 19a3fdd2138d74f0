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
