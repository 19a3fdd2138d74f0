// Package alerts owns alert rules and alert state: it evaluates readings
// and device status changes as they arrive, keeps one open alert per
// (rule, device), and notifies crews.
package alerts
