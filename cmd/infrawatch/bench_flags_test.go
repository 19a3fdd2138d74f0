package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestBenchRepeatFlag: --repeat is refused where it means nothing, before
// anything is started.
func TestBenchRepeatFlag(t *testing.T) {
	for _, args := range [][]string{
		{"--repeat", "0", "--mode", "all"},
		{"--repeat", "2", "--mode", "embedded"},
		{"--repeat", "2", "--mode", "all", "--ramp"},
	} {
		var out, errOut bytes.Buffer
		err := cmdBench(context.Background(), args, &out, &errOut)
		assert.ErrorContains(t, err, "--repeat", "%v", args)
		assert.Empty(t, out.String(), "%v: nothing ran", args)
	}
}
