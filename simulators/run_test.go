package simulators

import (
	"context"
	"encoding/json"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// A device disconnected while paho sleeps between reconnect attempts
		// (the offline fault) leaves paho's reconnect goroutine to notice at
		// the end of its back-off (at most 10 s); paho offers no way to wait.
		goleak.IgnoreAnyFunction("github.com/eclipse/paho%2emqtt%2egolang.(*client).reconnect"),
		goleak.IgnoreAnyFunction("github.com/eclipse/paho%2emqtt%2egolang.(*client).Disconnect.func1"),
	)
}

// observer subscribes to everything the fleet publishes.
type observer struct {
	mu        sync.Mutex
	readings  map[string]int    // device id → readings seen
	status    map[string]string // device id → last status
	statusLog map[string][]string
	malformed int
	bad       []string
	client    mqtt.Client
}

func newObserver(t *testing.T, brokerURL string) *observer {
	t.Helper()
	o := &observer{readings: map[string]int{}, status: map[string]string{}, statusLog: map[string][]string{}}
	opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID("observer").SetOrderMatters(false)
	o.client = mqtt.NewClient(opts)
	tok := o.client.Connect()
	require.Truef(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "observer connect: %v", tok.Error())
	tok = o.client.SubscribeMultiple(map[string]byte{
		"devices/+/telemetry": 1, "gateways/+/telemetry": 1, "devices/+/status": 1,
	}, o.handle)
	require.Truef(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "observer subscribe: %v", tok.Error())
	t.Cleanup(func() { o.client.Disconnect(100) })
	return o
}

func (o *observer) handle(_ mqtt.Client, m mqtt.Message) {
	parts := strings.Split(m.Topic(), "/")
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case parts[0] == "devices" && parts[2] == "status":
		o.status[parts[1]] = string(m.Payload())
		o.statusLog[parts[1]] = append(o.statusLog[parts[1]], string(m.Payload()))
	case parts[0] == "devices":
		var r wireReading
		if json.Unmarshal(m.Payload(), &r) != nil {
			o.malformed++
			return
		}
		if !o.validReading(r) {
			o.bad = append(o.bad, string(m.Payload()))
		}
		o.readings[parts[1]]++
	case parts[0] == "gateways":
		var msg map[string][]wireReading
		if json.Unmarshal(m.Payload(), &msg) != nil {
			o.malformed++
			return
		}
		for id, rs := range msg {
			for _, r := range rs {
				if !o.validReading(r) {
					o.bad = append(o.bad, string(m.Payload()))
				}
			}
			o.readings[id] += len(rs)
		}
	}
}

func (o *observer) validReading(r wireReading) bool {
	age := time.Since(time.UnixMilli(r.TS))
	return age > -time.Second && age < time.Minute && len(r.Values) > 0
}

// waitFor polls cond under the observer's lock.
func (o *observer) waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		o.mu.Lock()
		ok := cond()
		o.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func fleetYAML(t testing.TB) []byte {
	b, err := os.ReadFile("../" + DefaultFleetFile)
	require.NoError(t, err)
	return b
}

// startRun runs the fleet in the background and returns the running sim
// and a stop function that returns Run's error.
func startRun(t *testing.T, o Options) (*sim, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *sim, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, o, func(s *sim) { ready <- s }) }()
	select {
	case s := <-ready:
		return s, func() error { cancel(); return <-done }
	case err := <-done:
		cancel()
		t.Fatalf("run ended before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("fleet not ready in 30s")
	}
	return nil, nil
}

func TestRunAgainstMosquitto(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	obs := newObserver(t, mq.URL)
	o := Options{Devices: 40, Rate: 150, Seed: 5, FleetYAML: fleetYAML(t), BrokerURL: mq.URL, Logger: slog.New(slog.DiscardHandler)}
	specs, err := LoadFleet(o)
	require.NoError(t, err)

	s, stop := startRun(t, o)
	var direct []string
	for _, d := range specs {
		if d.Connects() {
			direct = append(direct, d.ID)
		}
	}
	obs.waitFor(t, "telemetry from every device", 15*time.Second, func() bool {
		for _, d := range specs {
			if obs.readings[d.ID] == 0 {
				return false
			}
		}
		return true
	})
	obs.waitFor(t, "online from every connected device", 5*time.Second, func() bool {
		for _, id := range direct {
			if obs.status[id] != "online" {
				return false
			}
		}
		return true
	})

	// Cut one device's connection as a failing link would: the broker
	// publishes its last will, and the device comes back.
	var victim *deviceConn
	for _, c := range s.conns {
		if strings.Contains(c.id, "-tc-") {
			victim = c
			break
		}
	}
	require.Truef(t, victim != nil, "no traffic counter connection")
	victim.cut(time.Now().Add(500 * time.Millisecond))
	obs.waitFor(t, "last will of "+victim.id, 10*time.Second, func() bool { return obs.status[victim.id] == "offline" })
	obs.waitFor(t, victim.id+" back online", 20*time.Second, func() bool { return obs.status[victim.id] == "online" })

	require.NoError(t, stop(), "run")
	obs.waitFor(t, "offline from every device on stop", 5*time.Second, func() bool {
		for _, id := range direct {
			if obs.status[id] != "offline" {
				return false
			}
		}
		return true
	})
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.Truef(t, obs.malformed == 0 && len(obs.bad) == 0, "malformed %d, bad %v", obs.malformed, obs.bad)
	total := 0
	for _, n := range obs.readings {
		total += n
	}
	t.Logf("%d devices (%d connected), %d readings", len(specs), len(direct), total)
	require.Truef(t, len(obs.readings) == len(specs), "readings from %d ids, fleet has %d", len(obs.readings), len(specs))

	// The retained status is what a late subscriber sees.
	late := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL).SetClientID("late"))
	tok := late.Connect()
	require.Truef(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "late connect: %v", tok.Error())
	defer late.Disconnect(100)
	got := make(chan string, 1)
	late.Subscribe(statusTopic(direct[0]), 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case got <- string(m.Payload()):
		default:
		}
	})
	select {
	case v := <-got:
		require.Truef(t, v == "offline", "retained status %q", v)
	case <-time.After(5 * time.Second):
		t.Fatal("no retained status")
	}
}

func TestRunWithFaults(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	obs := newObserver(t, mq.URL)
	var logs testenv.LogBuffer
	o := Options{
		// The whole fleet, so that it has site gateways (for backhaul loss).
		Rate: 400, Seed: 11, FleetYAML: fleetYAML(t), BrokerURL: mq.URL,
		Faults: true,
		FaultRates: FaultRates{Spike: 0.05, Stuck: 0.01, Drift: 0.01, Dropout: 0.01, Offline: 0.002,
			BackhaulLoss: 0.02, ClockSkew: 0.01, Duplicate: 0.02, Malformed: 0.03, Oversized: 0.01},
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	}
	_, stop := startRun(t, o)
	kinds := map[string]int{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		clear(kinds)
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var rec struct {
				Msg, Kind, Level string
				DeviceID         string `json:"device_id"`
			}
			require.NoError(t, json.Unmarshal([]byte(line), &rec), "log line ", line)
			if rec.Msg == "simulated fault" {
				require.Truef(t, rec.Level == "INFO" && rec.DeviceID != "", "fault log %s", line)
				kinds[rec.Kind]++
			}
		}
		if len(kinds) == int(numFaultKinds) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	require.NoError(t, stop(), "run")
	t.Logf("faults: %v", kinds)
	for k := range numFaultKinds {
		assert.Truef(t, kinds[k.String()] > 0, "no %s fault logged", k)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	assert.Truef(t, obs.malformed > 0, "the broker carried no malformed payload")
}

// TestRunMultiplexed runs more devices than connections: the rest travel
// through multiplexers, and every device's telemetry still arrives.
func TestRunMultiplexed(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	obs := newObserver(t, mq.URL)
	o := Options{Devices: 300, Rate: 900, Seed: 8, FleetYAML: fleetYAML(t), BrokerURL: mq.URL,
		MaxConnections: 40, MuxDevices: 100, MuxInterval: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	specs, err := LoadFleet(o)
	require.NoError(t, err)
	s, stop := startRun(t, o)
	require.Truef(t, len(s.conns) <= 40, "%d connections", len(s.conns))
	muxed := 0
	for _, d := range specs {
		if strings.HasPrefix(d.GatewayID, MuxIDPrefix) {
			muxed++
		}
	}
	require.Truef(t, muxed > 200, "only %d devices multiplexed", muxed)
	obs.waitFor(t, "telemetry from every device", 20*time.Second, func() bool {
		for _, d := range specs {
			if obs.readings[d.ID] == 0 {
				return false
			}
		}
		return true
	})
	require.NoError(t, stop(), "run")
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.Truef(t, obs.malformed == 0 && len(obs.bad) == 0, "malformed %d, bad %v", obs.malformed, obs.bad)
	t.Logf("%d devices over %d connections (%d multiplexed)", len(specs), len(s.conns), muxed)
}

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		o    Options
		want string
	}{
		{Options{Devices: -1}, "devices"},
		{Options{Rate: -2}, "rate"},
		{Options{BrokerURL: "localhost"}, "broker"},
		{Options{BrokerURL: "http://x:1"}, "broker: unsupported scheme"},
		{Options{APIURL: "http://127.0.0.1:8080"}, "token"},
		{Options{APIURL: "nope", Token: "x"}, "api"},
		{Options{QoS: 2}, "qos"},
		{Options{Faults: true, FaultRates: FaultRates{Spike: 2}}, "fault_rates.spike"},
	}
	for _, c := range cases {
		err := c.o.withDefaults().Validate()
		assert.Truef(t, err != nil && strings.Contains(err.Error(), c.want), "%+v: err = %v, want %q", c.o, err, c.want)
	}
	require.NoError(t, Options{}.withDefaults().Validate(), "defaults")
	d := Options{}.withDefaults()
	assert.Truef(t, d.QoS == 1 && d.BrokerURL == DefaultBrokerURL && d.FleetFile == DefaultFleetFile, "defaults %+v", d)
	assert.Truef(t, Options{AtMostOnce: true}.withDefaults().QoS == 0, "AtMostOnce")

	err := Run(context.Background(), Options{FleetFile: "/nonexistent/fleet.yaml"})
	assert.Truef(t, err != nil && strings.Contains(err.Error(), "fleet_file"), "err = %v", err)
}

func TestRunFailsWhenTheBrokerRefuses(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{DenyAnonymous: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, Options{Devices: 5, FleetYAML: fleetYAML(t), BrokerURL: mq.URL, Logger: slog.New(slog.DiscardHandler)})
	require.Truef(t, err != nil && strings.Contains(err.Error(), "connect device"), "err = %v", err)
	require.Truef(t, ctx.Err() == nil, "Run took until the deadline")
}
