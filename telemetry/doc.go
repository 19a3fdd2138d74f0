// Package telemetry holds the few value types that cross package boundaries
// on the ingest path: a decoded Reading, the Device metadata that ingest
// needs to store and route it, and the Consumer interface through which
// ingest hands accepted readings to live state, alerts and the stream hub.
//
// It has no logic and no dependencies, so every other package may import it
// without creating cycles.
package telemetry
