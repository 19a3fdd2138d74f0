package broker

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMatchTopic(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"devices/+/telemetry", "devices/d1/telemetry", true},
		{"devices/+/telemetry", "devices/d1/status", false},
		{"devices/+/telemetry", "devices/d1/telemetry/x", false},
		{"devices/+/telemetry", "devices/d1", false},
		{"devices/+/telemetry", "devices//telemetry", true},
		{"devices/#", "devices", true},
		{"devices/#", "devices/a/b", true},
		{"gateways/+/telemetry", "devices/d1/telemetry", false},
		{"+/x", "$SYS/x", false},
		{"#", "$SYS/x", false},
		{"a/b", "a/b", true},
		{"a/b", "a", false},
	} {
		assert.Equal(t, tc.want, matchTopic(strings.Split(tc.filter, "/"), tc.topic), "%s ~ %s", tc.filter, tc.topic)
	}
}

// TestInterceptAcksWhenTold: a device's QoS 1 PUBLISH on an intercepted
// topic reaches the handler in process, and the device gets its PUBACK only
// when the handler's ack is called; subscribers never see it.
func TestInterceptAcksWhenTold(t *testing.T) {
	if testing.Short() {
		t.Skip("broker integration test (-short)")
	}
	type delivery struct {
		topic, payload string
		ack            func()
	}
	got := make(chan delivery, 10)
	b, err := New(Options{
		Listen: "127.0.0.1:0", Auth: newFakeAuth(), ServicePassword: servicePassword,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)), Registerer: prometheus.NewRegistry(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	require.NoError(t, b.Intercept("devices/+/telemetry", func(topic string, payload []byte, ack func()) bool {
		got <- delivery{topic, string(payload), ack}
		return true
	}))
	statuses := make(chan string, 10)
	require.NoError(t, b.Subscribe("devices/+/status", 1, func(topic string, payload []byte, ack func()) bool {
		assert.Nil(t, ack)
		statuses <- string(payload)
		return true
	}))
	require.NoError(t, b.Start(t.Context()))
	require.Error(t, b.Intercept("gateways/+/telemetry", func(string, []byte, func()) bool { return true }), "after Start")

	svc := mustDial(t, b.Addr(), "svc", "infrawatch", servicePassword)
	in := newInbox()
	subscribe(t, svc, "devices/#", 1, in.handle)

	dev := mustDial(t, b.Addr(), "d1", "d1", "secret-1")
	tok := dev.Publish("devices/d1/telemetry", 1, false, `{"v":1}`)
	var d delivery
	select {
	case d = <-got:
	case <-time.After(waitFor):
		t.Fatal("intercept handler not called")
	}
	assert.Equal(t, "devices/d1/telemetry", d.topic)
	assert.Equal(t, `{"v":1}`, d.payload)
	require.NotNil(t, d.ack)
	assert.False(t, tok.WaitTimeout(300*time.Millisecond), "PUBACK before ack")
	d.ack()
	require.True(t, tok.WaitTimeout(waitFor), "PUBACK after ack")
	require.NoError(t, tok.Error())

	// QoS 0: handed over, nothing to acknowledge.
	require.True(t, dev.Publish("devices/d1/telemetry", 0, false, "q0").WaitTimeout(waitFor))
	select {
	case d = <-got:
		assert.Equal(t, "q0", d.payload)
		assert.Nil(t, d.ack)
	case <-time.After(waitFor):
		t.Fatal("QoS 0 not handed over")
	}

	// Other topics take the usual way: status reaches the in-process
	// subscription and the service's.
	publish(t, dev, "devices/d1/status", 1, "online")
	select {
	case s := <-statuses:
		assert.Equal(t, "online", s)
	case <-time.After(waitFor):
		t.Fatal("status not delivered in process")
	}
	assert.Equal(t, "devices/d1/status", in.next(t).Topic(), "telemetry must not reach subscribers")
	in.none(t, 100*time.Millisecond)
}

// TestStopAcceptingThenClose: after StopAccepting no client can connect,
// the connected ones stay until Close, and Close disconnects them (mochi
// would otherwise wait for them forever).
func TestStopAcceptingThenClose(t *testing.T) {
	b := startBroker(t, nil)
	dev := mustDial(t, b.Addr(), "d1", "d1", "secret-1")
	b.StopAccepting()
	_, err := dial(t, b.Addr(), "d2", "d2", "secret-2", nil)
	require.Error(t, err, "connect after StopAccepting")
	require.True(t, dev.IsConnectionOpen())
	done := make(chan error, 1)
	go func() { done <- b.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("Close hangs after StopAccepting")
	}
	require.Eventually(t, func() bool { return !dev.IsConnectionOpen() }, waitFor, 10*time.Millisecond)
}
