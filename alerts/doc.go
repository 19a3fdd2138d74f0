// Package alerts owns alert rules and alert state: it evaluates readings
// and device status changes by reading time (a short per-device reorder
// window puts readings that arrive out of order back in order), keeps one
// open alert per (rule, device) with hysteresis and `for` delays, folds the
// alerts of devices behind a gateway that is down into the gateway's, and
// notifies crews through a pipeline of bounded, retrying notifiers
// (webhooks, MQTT) that never slow evaluation. Rules, alerts and silences
// persist through a Store (SQLite); transitions are also written to the
// InfluxDB measurement alert_events. HTTP routes live in dashboard-api.
package alerts
