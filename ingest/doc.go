// Package ingest owns the path from MQTT to storage: it subscribes to
// devices' telemetry and status topics (QoS 1, persistent session), decodes
// and validates payloads (decode.go), dead-letters what it rejects to
// infrawatch/deadletter/<reason>, hands accepted readings to the consumers
// that cmd wires in, and writes them to InfluxDB in batches through a
// Writer (store.Store), acknowledging each MQTT message only after its
// readings are stored.
package ingest
