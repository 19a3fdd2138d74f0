//go:build race

package devices

// raceEnabled: heap and timing measurements mean nothing under the race
// detector, and take minutes there.
const raceEnabled = true
