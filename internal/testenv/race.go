//go:build race

package testenv

// RaceEnabled: heap and timing measurements mean nothing under the race
// detector, and take minutes there.
const RaceEnabled = true
