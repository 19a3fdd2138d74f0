package configs

import _ "embed"

//go:embed fleet.yaml
var fleetYAML []byte

// Fleet returns the default simulated fleet (configs/fleet.yaml), embedded so
// that `infrawatch simulate` works from any directory.
func Fleet() []byte { return append([]byte(nil), fleetYAML...) }
