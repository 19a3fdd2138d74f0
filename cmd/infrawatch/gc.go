package main

// defaultGCPercent is the collector target serve runs with unless GOGC is
// set. Most of serve's heap is long-lived state (the registry, live state,
// the stream's replay ring) that every collection marks anyway, while Go's
// default of 100 lets the heap, and so resident memory, reach twice that
// state between collections. At 75, measured (BENCHMARKS.md, round 7):
// resident memory at 100,000 devices 1,034 → 920 B per device, and CPU per
// stored reading at 40,000/s no higher (0.0140, 0.0147, 0.0132 s per 1,000
// at 100 against 0.0133, 0.0138, 0.0129 at 75, runs alternated).
const defaultGCPercent = 75

// gcPercent returns the collector target serve sets, or false when the
// operator chose one with GOGC (which the runtime has applied already).
func gcPercent(lookupEnv func(string) (string, bool)) (int, bool) {
	if _, set := lookupEnv("GOGC"); set {
		return 0, false
	}
	return defaultGCPercent, true
}
