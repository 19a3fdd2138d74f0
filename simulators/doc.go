// Package simulators owns the simulated fleet behind `infrawatch simulate`:
// one deterministic Model per device type (roads, transport, network and
// roadside gateways), the fleet layout read from configs/fleet.yaml,
// provisioning of that fleet through the HTTP API as an installer would, and
// a scheduler that publishes each device's readings over MQTT with the
// device's own credentials, optionally with field faults (FaultRates; each
// fault is logged as "simulated fault" with its kind and the reaction to
// expect).
//
// Scale: one scheduler goroutine drives every device from a heap, readings
// are encoded by hand, and above Options.MaxConnections devices ride on
// multiplexers (gateway devices sim-mux-NNN the simulator adds; the broker
// lets an identity publish only under its own topics, so carried readings
// travel as gateway messages and the registry must list each carried device
// with gateway_id = its multiplexer; Provision registers both). Measured on
// the 2-core dev box: 10,000 devices at 10,000 readings/s cost the simulator
// about 27 ms of CPU per 1,000 readings (see TestCountReadings for how).
//
// Speedup: with Options.Speedup N and a Start in the past, models see
// simulated time running N times faster and readings carry it; once it
// catches up with the clock the fleet continues live, so timestamps stay
// within what ingest accepts (the last 7 days, at most 5 minutes ahead).
package simulators
