package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestGCPercent(t *testing.T) {
	p, ok := gcPercent(func(string) (string, bool) { return "", false })
	assert.True(t, ok)
	assert.Equal(t, defaultGCPercent, p)
	for _, v := range []string{"100", "off", ""} {
		_, ok = gcPercent(func(k string) (string, bool) { return v, k == "GOGC" })
		assert.False(t, ok, "GOGC=%q is the operator's choice", v)
	}
}
