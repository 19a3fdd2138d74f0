package main

import (
	"os"
	"testing"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopShared()
	os.Exit(code)
}
