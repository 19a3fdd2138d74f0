// Package loadgen is the load tool behind `infrawatch bench` and `make bench`.
// It provisions a fleet of bench devices through the HTTP API, publishes
// readings over MQTT at a fixed total rate, waits until the system has
// drained, counts what reached InfluxDB, and reports loss (acknowledged but
// not stored), throughput, publish-to-stored lag and the CPU and memory each
// process spent. StartSystem runs a private, complete system so that a run
// measures nothing else: influxd and `infrawatch serve` with its embedded
// broker or behind a private Mosquitto, or Telegraf behind Mosquitto (the
// reference a Comparison sets side by side). It also measures publish →
// websocket latency with stream clients connected (Options.WSClients) and
// infrawatch's memory per registered device (RegistryMemory).
package loadgen
