// Package ingest owns the path from MQTT to storage: it subscribes to
// devices' telemetry and status topics (QoS 1, persistent session), decodes
// and validates payloads (decode.go), dead-letters what it rejects to
// infrawatch/deadletter/<reason> and keeps the newest dead letters for
// listing and replay (deadstore.go), hands accepted readings to the
// consumers that cmd wires in, and writes them to InfluxDB in batches
// through a Writer (store.Store), or, while InfluxDB is down, to a bounded
// disk spool replayed when it is back (spool.go). Each MQTT message is
// acknowledged only after its readings are stored or spooled, and counted
// in exactly one outcome (accounting.go). With the embedded broker, ingest
// runs in process (Options.Local, Ingester.Deliver): no MQTT connection to
// itself, and the device's own PUBACK waits for the readings to be durable.
// From an external broker, ingest queues each PUBACK itself on the
// connection the message arrived on (chunk.ack, session.go), not through
// paho's Ack.
// Up to WriteConcurrency batches are written at once (writer.go).
package ingest
