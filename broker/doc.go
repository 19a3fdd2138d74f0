// Package broker owns the embedded MQTT broker (mochi-mqtt) that infrawatch
// starts when no external broker is configured: its TCP listener, who may
// connect (devices, people with API tokens, the internal service identity),
// what each may publish and subscribe to, per-client queue bounds, and the
// broker's Prometheus metrics.
package broker
