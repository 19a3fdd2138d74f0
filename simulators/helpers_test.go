package simulators

import (
	"fmt"
	"testing"
)

// testify v1.12.1 does not build in this module (its yaml dependency has no
// go.sum entry), so the tests use these few helpers.

func noErr(t testing.TB, err error, what ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprint(what...), err)
	}
}

// want reports a failed expectation and goes on.
func want(t testing.TB, ok bool, format string, a ...any) {
	t.Helper()
	if !ok {
		t.Errorf(format, a...)
	}
}

// need stops the test on a failed precondition.
func need(t testing.TB, ok bool, format string, a ...any) {
	t.Helper()
	if !ok {
		t.Fatalf(format, a...)
	}
}
