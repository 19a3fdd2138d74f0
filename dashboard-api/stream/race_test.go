//go:build race

package stream

// raceEnabled: heap measurements mean nothing under the race detector.
const raceEnabled = true
