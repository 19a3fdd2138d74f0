// Package testenv starts the real servers that integration tests need, a
// local InfluxDB OSS 1.8 and Mosquitto, on free loopback ports with
// temporary data directories, and stops them when the test ends.
// StartInflux and StartMosquitto start the same servers for callers that
// stop them themselves: TestMain and the load generator's bench.
//
// Nothing here is a fake: tests talk to the same server binaries that
// `make run` uses.
package testenv
