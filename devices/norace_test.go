//go:build !race

package devices

const raceEnabled = false
