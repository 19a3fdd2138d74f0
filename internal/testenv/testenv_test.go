package testenv

import (
	"net"
	"net/http"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

func TestInfluxStartsAndStops(t *testing.T) {
	s := OwnInflux(t)
	resp, err := http.Get(s.URL + "/ping")
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("ping status %d", resp.StatusCode)
	}
	s.Stop()
	if _, err := http.Get(s.URL + "/ping"); err == nil {
		t.Fatal("influxd still answers after Stop")
	}
}

func TestMosquittoStarts(t *testing.T) {
	s := Mosquitto(t, MosquittoOptions{})
	c, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatalf("dial mosquitto: %v", err)
	}
	c.Close()
}
