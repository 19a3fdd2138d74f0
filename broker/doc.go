// Package broker owns the embedded MQTT broker (mochi-mqtt) that infrawatch
// starts when no external broker is configured: its TCP (optionally TLS)
// listener, who may connect (devices, people with API tokens, the internal
// service identity) and how often a login may fail, what each may publish and
// subscribe to, per-client queue bounds, draining at shutdown (Drain,
// StopAccepting), handing telemetry to ingest in process with the PUBACK
// deferred until ingest has made it durable (Intercept, intercept.go), and
// the broker's Prometheus metrics.
package broker
