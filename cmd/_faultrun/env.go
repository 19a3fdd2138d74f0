package main

import "os"

// environ is a seam so tests can run serve without touching the process env.
var environ = os.Environ
