// Package simulators owns the simulated fleet behind `infrawatch simulate`:
// one deterministic Model per device type (roads, transport, network and
// roadside gateways), the fleet layout read from configs/fleet.yaml,
// provisioning of that fleet through the HTTP API as an installer would, and
// a scheduler that publishes each device's readings over MQTT with the
// device's own credentials, optionally with field faults.
package simulators
