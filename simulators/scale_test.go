package simulators

import (
	"bytes"
	"github.com/stretchr/testify/require"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestCountReadings is the counting subscriber of the scale measurement
// (see the package's README section in doc.go); it runs only when
// SIM_COUNT_BROKER names a broker, as its own process, so that its CPU is
// not the simulator's:
//
//	SIM_COUNT_BROKER=tcp://127.0.0.1:18883 SIM_COUNT_SECONDS=70 \
//	  go test -run TestCountReadings -v ./simulators/
func TestCountReadings(t *testing.T) {
	broker := os.Getenv("SIM_COUNT_BROKER")
	if broker == "" {
		t.Skip("SIM_COUNT_BROKER not set")
	}
	secs, _ := strconv.Atoi(os.Getenv("SIM_COUNT_SECONDS"))
	if secs <= 0 {
		secs = 60
	}
	var readings, msgs, devMsgs, gwMsgs atomic.Int64
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("sim-counter").SetOrderMatters(false))
	tok := c.Connect()
	require.Truef(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "connect: %v", tok.Error())
	defer c.Disconnect(100)
	count := func(_ mqtt.Client, m mqtt.Message) {
		msgs.Add(1)
		if m.Topic()[0] == 'g' {
			gwMsgs.Add(1)
		} else {
			devMsgs.Add(1)
		}
		readings.Add(int64(bytes.Count(m.Payload(), []byte(`"ts":`))))
	}
	tok = c.SubscribeMultiple(map[string]byte{"devices/+/telemetry": 0, "gateways/+/telemetry": 0}, count)
	require.Truef(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "subscribe: %v", tok.Error())
	start := time.Now()
	last := int64(0)
	for time.Since(start) < time.Duration(secs)*time.Second {
		time.Sleep(5 * time.Second)
		n := readings.Load()
		t.Logf("%3.0fs readings %9d (%6.0f/s over 5 s) messages %d (device %d, gateway %d)",
			time.Since(start).Seconds(), n, float64(n-last)/5, msgs.Load(), devMsgs.Load(), gwMsgs.Load())
		last = n
	}
	t.Logf("total readings %d in %.0f s", readings.Load(), time.Since(start).Seconds())
	if readings.Load() == 0 {
		t.Fatalf("no reading arrived at %s in %d s: is the simulator publishing there?", broker, secs)
	}
}
