package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	servicePassword = "service-secret"
	waitFor         = 5 * time.Second
)

// fakeAuth is a fixed set of device secrets and tokens; it counts calls so
// tests can show that malformed names never reach it.
type fakeAuth struct {
	devices map[string]string // id -> secret
	tokens  map[string]string // token -> role
	calls   atomic.Int64
	// storeDown makes AuthenticateDevice fail as an unreadable store does.
	storeDown atomic.Bool
}

func (a *fakeAuth) AuthenticateDevice(id, secret string) (bool, error) {
	a.calls.Add(1)
	if a.storeDown.Load() {
		return false, errors.New("registry store unreadable")
	}
	s, ok := a.devices[id]
	return ok && s == secret, nil
}

func (a *fakeAuth) AuthenticateToken(token string) (string, bool) {
	a.calls.Add(1)
	r, ok := a.tokens[token]
	return r, ok
}

func newFakeAuth() *fakeAuth {
	return &fakeAuth{
		devices: map[string]string{
			"d1": "secret-1", "d2": "secret-2", "gw1": "secret-gw",
			// Syntactically invalid names with valid secrets: refusing
			// them proves the syntax check runs first.
			"a+b": "s", "a#b": "s", "a/b": "s", "a b": "s",
		},
		tokens: map[string]string{"tok-viewer": RoleViewer, "tok-operator": RoleOperator, "tok-admin": RoleAdmin},
	}
}

type testBroker struct {
	*Broker
	auth *fakeAuth
	reg  *prometheus.Registry
}

func startBroker(t *testing.T, mod func(*Options)) *testBroker {
	t.Helper()
	if testing.Short() {
		t.Skip("broker integration test (-short)")
	}
	auth := newFakeAuth()
	reg := prometheus.NewRegistry()
	o := Options{
		Listen:          "127.0.0.1:0",
		Auth:            auth,
		ServicePassword: servicePassword,
		Logger:          slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:      reg,
	}
	if mod != nil {
		mod(&o)
	}
	b, err := New(o)
	require.NoError(t, err)
	require.NoError(t, b.Start(t.Context()))
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return &testBroker{Broker: b, auth: auth, reg: reg}
}

// dial connects a paho client and returns the CONNECT result.
func dial(t *testing.T, addr, clientID, user, pass string, mod func(*paho.ClientOptions)) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(clientID).
		SetUsername(user).
		SetPassword(pass).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(waitFor).
		SetCleanSession(true).
		SetProtocolVersion(4) // no silent fallback to 3.1 after a refusal
	if mod != nil {
		mod(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(waitFor) {
		return nil, fmt.Errorf("connect %s: timeout", clientID)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func mustDial(t *testing.T, addr, clientID, user, pass string) paho.Client {
	t.Helper()
	c, err := dial(t, addr, clientID, user, pass, nil)
	require.NoError(t, err, "connect %s as %s", clientID, user)
	return c
}

// subscribe subscribes and returns the granted QoS (0x80 = refused).
func subscribe(t *testing.T, c paho.Client, filter string, qos byte, h paho.MessageHandler) byte {
	t.Helper()
	tok := c.Subscribe(filter, qos, h)
	require.True(t, tok.WaitTimeout(waitFor), "subscribe %s", filter)
	require.NoError(t, tok.Error())
	st, ok := tok.(*paho.SubscribeToken)
	require.True(t, ok)
	return st.Result()[filter]
}

func publish(t *testing.T, c paho.Client, topic string, qos byte, payload string) {
	t.Helper()
	tok := c.Publish(topic, qos, false, payload)
	require.True(t, tok.WaitTimeout(waitFor), "publish %s", topic)
	require.NoError(t, tok.Error())
}

// inbox collects received messages.
type inbox struct {
	ch chan paho.Message
}

func newInbox() *inbox { return &inbox{ch: make(chan paho.Message, 100)} }

func (in *inbox) handle(_ paho.Client, m paho.Message) { in.ch <- m }

func (in *inbox) next(t *testing.T) paho.Message {
	t.Helper()
	select {
	case m := <-in.ch:
		return m
	case <-time.After(waitFor):
		t.Fatal("no message received")
		return nil
	}
}

func (in *inbox) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-in.ch:
		t.Fatalf("unexpected message on %s: %q", m.Topic(), m.Payload())
	case <-time.After(d):
	}
}

// metric reads one sample from the registry (0 when absent).
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

func TestDevicePublishReachesService(t *testing.T) {
	b := startBroker(t, nil)
	svc := mustDial(t, b.Addr(), "ingest", "infrawatch", servicePassword)
	in := newInbox()
	assert.Equal(t, byte(1), subscribe(t, svc, "devices/+/telemetry", 1, in.handle))
	assert.Equal(t, byte(1), subscribe(t, svc, "gateways/+/telemetry", 1, in.handle))

	dev := mustDial(t, b.Addr(), "d1", "d1", "secret-1")
	publish(t, dev, "devices/d1/telemetry", 1, `{"values":{"x":1}}`)
	m := in.next(t)
	assert.Equal(t, "devices/d1/telemetry", m.Topic())
	assert.JSONEq(t, `{"values":{"x":1}}`, string(m.Payload()))

	gw := mustDial(t, b.Addr(), "gw1-conn", "gw1", "secret-gw")
	publish(t, gw, "gateways/gw1/telemetry", 0, `{"d1":[]}`)
	assert.Equal(t, "gateways/gw1/telemetry", in.next(t).Topic())

	assert.Equal(t, 3.0, metric(t, b.reg, "infrawatch_broker_clients_connected", nil))
	assert.GreaterOrEqual(t, metric(t, b.reg, "infrawatch_broker_messages_received_total", nil), 2.0)
	// Counted after the write returns, which can be after the subscriber
	// has read the packet.
	assert.Eventually(t, func() bool {
		return metric(t, b.reg, "infrawatch_broker_messages_sent_total", nil) >= 2
	}, 5*time.Second, 5*time.Millisecond, "messages sent counted")
}

func TestRefusedCredentials(t *testing.T) {
	b := startBroker(t, nil)
	for _, tc := range []struct {
		name, user, pass, reason string
		want                     error
	}{
		{"wrong secret", "d1", "wrong", reasonBadCredential, pahopackets.ErrorRefusedNotAuthorised},
		{"unknown device", "d9", "secret-1", reasonBadCredential, pahopackets.ErrorRefusedNotAuthorised},
		{"other device's secret", "d1", "secret-2", reasonBadCredential, pahopackets.ErrorRefusedNotAuthorised},
		{"wrong service password", "infrawatch", "nope", reasonBadCredential, pahopackets.ErrorRefusedNotAuthorised},
		{"bad token", "token", "tok-nope", reasonBadCredential, pahopackets.ErrorRefusedNotAuthorised},
		{"no password", "d1", "", reasonBadCredential, pahopackets.ErrorRefusedNotAuthorised},
		{"anonymous", "", "", reasonAnonymous, pahopackets.ErrorRefusedNotAuthorised},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := metric(t, b.reg, "infrawatch_broker_auth_failures_total", map[string]string{"reason": tc.reason})
			_, err := dial(t, b.Addr(), "c1", tc.user, tc.pass, nil)
			require.ErrorIs(t, err, tc.want)
			assert.Equal(t, before+1, metric(t, b.reg, "infrawatch_broker_auth_failures_total", map[string]string{"reason": tc.reason}))
		})
	}
}

func TestMalformedNamesRefusedBeforeAuthentication(t *testing.T) {
	b := startBroker(t, nil)
	bad := []string{"a+b", "a#b", "a/b", "a b", "a,b", "a=b", "", strings.Repeat("x", 65), "a\x00b", "\xff\xfe"}
	for _, id := range bad {
		t.Run(fmt.Sprintf("client id %q", id), func(t *testing.T) {
			_, err := dial(t, b.Addr(), id, "d1", "secret-1", nil)
			require.Error(t, err)
			if validUTF8NoNUL(id) { // mochi drops invalid UTF-8 and NUL as malformed, before any hook
				require.ErrorIs(t, err, pahopackets.ErrorRefusedIDRejected)
			}
		})
		if id == "" {
			continue // an empty username is the anonymous case
		}
		t.Run(fmt.Sprintf("username %q", id), func(t *testing.T) {
			// Mochi reads the username as bytes, so NUL and invalid
			// UTF-8 reach our check too.
			_, err := dial(t, b.Addr(), "c1", id, "s", nil)
			require.ErrorIs(t, err, pahopackets.ErrorRefusedBadUsernameOrPassword) // v3 0x04: malformed
		})
	}
	assert.Zero(t, b.auth.calls.Load(), "the authenticator was asked about a malformed name")
	assert.Equal(t, 8.0, metric(t, b.reg, "infrawatch_broker_auth_failures_total", map[string]string{"reason": reasonBadClientID}))
	assert.Equal(t, 9.0, metric(t, b.reg, "infrawatch_broker_auth_failures_total", map[string]string{"reason": reasonBadUsername}))
}

func validUTF8NoNUL(s string) bool {
	return !strings.ContainsAny(s, "\x00\xff")
}

func TestDeviceCannotPublishForOthers(t *testing.T) {
	b := startBroker(t, nil)
	svc := mustDial(t, b.Addr(), "ingest", "infrawatch", servicePassword)
	in := newInbox()
	subscribe(t, svc, "#", 0, in.handle)

	dev := mustDial(t, b.Addr(), "d1", "d1", "secret-1")
	for _, topic := range []string{"devices/d2/telemetry", "gateways/d2/telemetry", "devices/d1", "alerts/s/d1", "infrawatch/deadletter/x"} {
		publish(t, dev, topic, 0, "forged")
	}
	// Messages from one connection are routed in order, so once this one
	// arrives the forged ones would have arrived before it.
	publish(t, dev, "devices/d1/telemetry", 0, "mine")
	m := in.next(t)
	assert.Equal(t, "devices/d1/telemetry", m.Topic())
	assert.Equal(t, "mine", string(m.Payload()))
	in.none(t, 100*time.Millisecond)
	assert.Equal(t, 5.0, metric(t, b.reg, "infrawatch_broker_acl_denied_total", map[string]string{"identity": "device", "action": "publish"}))

	// A device may only listen to its own commands.
	assert.Equal(t, byte(1), subscribe(t, dev, "devices/d1/#", 1, nil))
	assert.Equal(t, byte(0x80), subscribe(t, dev, "devices/+/commands", 1, nil))
	assert.Equal(t, byte(0x80), subscribe(t, dev, "#", 1, nil))
}

func TestTokenRoles(t *testing.T) {
	b := startBroker(t, nil)
	svc := mustDial(t, b.Addr(), "alerts-svc", "infrawatch", servicePassword)
	watch := newInbox()
	subscribe(t, svc, "#", 0, watch.handle)

	viewer := mustDial(t, b.Addr(), "field-app-1", "token", "tok-viewer")
	operator := mustDial(t, b.Addr(), "field-app-2", "token", "tok-operator")
	admin := mustDial(t, b.Addr(), "ops-tool", "token", "tok-admin")

	viewerIn := newInbox()
	assert.Equal(t, byte(1), subscribe(t, viewer, "alerts/#", 1, viewerIn.handle))
	assert.Equal(t, byte(0x80), subscribe(t, viewer, "infrawatch/deadletter/#", 1, nil))
	assert.Equal(t, byte(0x80), subscribe(t, viewer, "devices/#", 1, nil))
	assert.Equal(t, byte(1), subscribe(t, operator, "alerts/#", 1, nil))
	assert.Equal(t, byte(0x80), subscribe(t, operator, "infrawatch/deadletter/#", 1, nil))
	adminIn := newInbox()
	assert.Equal(t, byte(1), subscribe(t, admin, "alerts/#", 1, nil))
	assert.Equal(t, byte(1), subscribe(t, admin, "infrawatch/deadletter/#", 1, adminIn.handle))

	// The service publishes alerts and dead letters; people receive them.
	publish(t, svc, "alerts/site1/d1", 1, "alert")
	m := viewerIn.next(t)
	assert.Equal(t, "alerts/site1/d1", m.Topic())
	publish(t, svc, "infrawatch/deadletter/bad_value", 1, "dl")
	assert.Equal(t, "infrawatch/deadletter/bad_value", adminIn.next(t).Topic())
	watch.next(t)
	watch.next(t)

	// People publish nothing, whatever their role.
	publish(t, viewer, "alerts/site1/d1", 0, "forged")
	publish(t, admin, "alerts/site1/d1", 0, "forged")
	publish(t, admin, "devices/d1/telemetry", 0, "forged")
	publish(t, svc, "alerts/site1/sentinel", 0, "sentinel")
	assert.Equal(t, "sentinel", string(watch.next(t).Payload()))
	watch.none(t, 100*time.Millisecond)
	assert.Equal(t, 3.0, metric(t, b.reg, "infrawatch_broker_acl_denied_total", map[string]string{"identity": "token", "action": "publish"}))
	assert.Equal(t, 3.0, metric(t, b.reg, "infrawatch_broker_acl_denied_total", map[string]string{"identity": "token", "action": "subscribe"}))

	// The service publishes only alerts and dead letters.
	publish(t, svc, "devices/d1/commands", 0, "forged")
	publish(t, svc, "alerts/site1/sentinel", 0, "sentinel-2")
	assert.Equal(t, "sentinel-2", string(watch.next(t).Payload()))
}

// TestLastWill shows a device's will reaches its status topic when the
// connection dies, and that a will outside its own topics is refused at
// CONNECT (mochi publishes wills without asking the ACL).
func TestLastWill(t *testing.T) {
	b := startBroker(t, nil)
	svc := mustDial(t, b.Addr(), "ingest", "infrawatch", servicePassword)
	in := newInbox()
	subscribe(t, svc, "devices/+/status", 1, in.handle)

	var (
		mu   sync.Mutex
		conn net.Conn
	)
	dev, err := dial(t, b.Addr(), "d1", "d1", "secret-1", func(o *paho.ClientOptions) {
		o.SetWill("devices/d1/status", "offline", 1, true)
		o.SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(context.Background(), "tcp", u.Host)
			mu.Lock()
			conn = c
			mu.Unlock()
			return c, err
		})
	})
	require.NoError(t, err)
	publish(t, dev, "devices/d1/status", 1, "online")
	assert.Equal(t, "online", string(in.next(t).Payload()))

	mu.Lock()
	require.NoError(t, conn.Close()) // abrupt: no DISCONNECT, so the will fires
	mu.Unlock()
	m := in.next(t)
	assert.Equal(t, "devices/d1/status", m.Topic())
	assert.Equal(t, "offline", string(m.Payload()))

	// The will was retained: a late subscriber sees the device offline.
	late := newInbox()
	subscribe(t, mustDial(t, b.Addr(), "late", "infrawatch", servicePassword), "devices/d1/status", 1, late.handle)
	assert.Equal(t, "offline", string(late.next(t).Payload()))

	for _, topic := range []string{"devices/d2/status", "alerts/x/d1", "devices/d1/+"} {
		_, err = dial(t, b.Addr(), "d1", "d1", "secret-1", func(o *paho.ClientOptions) {
			o.SetWill(topic, "offline", 1, true)
		})
		require.ErrorIs(t, err, pahopackets.ErrorRefusedNotAuthorised, topic)
	}
	assert.Equal(t, 3.0, metric(t, b.reg, "infrawatch_broker_auth_failures_total", map[string]string{"reason": reasonWillDenied}))
	assert.Equal(t, 3.0, metric(t, b.reg, "infrawatch_broker_acl_denied_total", map[string]string{"identity": "device", "action": "will"}))
	in.none(t, 100*time.Millisecond)
}

// TestClientIDBelongsToItsOwner: a client id in use by one identity cannot
// be taken over (kicking the holder off) by another.
func TestClientIDBelongsToItsOwner(t *testing.T) {
	b := startBroker(t, nil)
	svc := mustDial(t, b.Addr(), "ingest", "infrawatch", servicePassword)
	lost := make(chan error, 1)
	_ = svc
	d1, err := dial(t, b.Addr(), "shared-id", "d1", "secret-1", func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})
	require.NoError(t, err)

	for _, tc := range []struct{ id, user, pass string }{
		{"ingest", "d1", "secret-1"},
		{"shared-id", "d2", "secret-2"},
		{"shared-id", "token", "tok-admin"},
		{"inline", "d1", "secret-1"}, // mochi's in-process client
	} {
		_, err := dial(t, b.Addr(), tc.id, tc.user, tc.pass, nil)
		require.ErrorIs(t, err, pahopackets.ErrorRefusedIDRejected, "%s as %s", tc.id, tc.user)
	}
	assert.True(t, d1.IsConnectionOpen())
	assert.True(t, svc.IsConnectionOpen())

	// The owner itself may take over its own session (a reconnect after a
	// half-open connection).
	d1again := mustDial(t, b.Addr(), "shared-id", "d1", "secret-1")
	select {
	case <-lost:
	case <-time.After(waitFor):
		t.Fatal("old connection not taken over")
	}
	publish(t, d1again, "devices/d1/telemetry", 1, "x")
}

// burst publishes n QoS 0 messages of size bytes to one service subscriber
// through the in-process client, as fast as the broker takes them. The
// subscriber is held until all are published, so the broker's queue for it
// (plus socket buffers) must absorb the burst. It waits until every message
// is either received or counted as dropped.
func burst(t *testing.T, b *testBroker, n, size int) (received int64) {
	t.Helper()
	svc := mustDial(t, b.Addr(), "ingest", "infrawatch", servicePassword)
	var got atomic.Int64
	hold := make(chan struct{})
	subscribe(t, svc, "devices/d1/telemetry", 0, func(paho.Client, paho.Message) {
		<-hold
		got.Add(1)
	})
	payload := []byte(strings.Repeat("x", size))
	for range n {
		require.NoError(t, b.Server().Publish("devices/d1/telemetry", payload, false, 0))
	}
	close(hold)
	deadline := time.Now().Add(60 * time.Second)
	for {
		dropped := metric(t, b.reg, "infrawatch_broker_messages_dropped_total", nil)
		if got.Load()+int64(dropped) >= int64(n) {
			return got.Load()
		}
		require.True(t, time.Now().Before(deadline), "received %d, dropped %v of %d", got.Load(), dropped, n)
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBurstNotDropped: a burst of 50,000 QoS 0 messages to one subscriber
// fits a per-client queue of 65536 (what a busy subscriber such as an ingest
// over MQTT needs); nothing is dropped.
func TestBurstNotDropped(t *testing.T) {
	b := startBroker(t, func(o *Options) {
		o.Logger = slog.New(slog.DiscardHandler)
		o.MaxPendingWrites = 65536
	})
	const n = 50_000
	assert.Equal(t, int64(n), burst(t, b, n, 100))
	assert.Zero(t, metric(t, b.reg, "infrawatch_broker_messages_dropped_total", nil))
	assert.Zero(t, metric(t, b.reg, "infrawatch_broker_inflight_dropped_total", nil))
	assert.GreaterOrEqual(t, metric(t, b.reg, "infrawatch_broker_messages_sent_total", nil), float64(n))
}

// TestQueueOverflowCounted: with a small queue a burst larger than the
// socket buffers overflows, and every message is either delivered or
// counted as dropped.
func TestQueueOverflowCounted(t *testing.T) {
	b := startBroker(t, func(o *Options) {
		o.Logger = slog.New(slog.DiscardHandler)
		o.MaxPendingWrites = 1024
	})
	const n = 20_000
	received := burst(t, b, n, 4096)
	dropped := metric(t, b.reg, "infrawatch_broker_messages_dropped_total", nil)
	assert.Positive(t, dropped)
	assert.Equal(t, float64(n), float64(received)+dropped)
}

func TestStartErrors(t *testing.T) {
	b := startBroker(t, nil)
	host, port, err := net.SplitHostPort(b.Addr())
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", host)
	assert.NotEqual(t, "0", port)

	other, err := New(Options{Listen: b.Addr(), Auth: newFakeAuth(), ServicePassword: "x"})
	require.NoError(t, err)
	err = other.Start(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), b.Addr())
	require.NoError(t, other.Close())
	require.NoError(t, other.Close())

	require.Error(t, b.Start(t.Context()), "second Start")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	third, err := New(Options{Listen: "127.0.0.1:0", Auth: newFakeAuth(), ServicePassword: "x"})
	require.NoError(t, err)
	require.ErrorIs(t, third.Start(ctx), context.Canceled)
	require.NoError(t, third.Close())
}

// TestLoginWhileRegistryUnreadable: when the registry cannot say whether a
// device's secret is right, the device is told the server is unavailable,
// not that its password is wrong, and such attempts do not count against
// it: once the registry is back it connects, however often it retried.
func TestLoginWhileRegistryUnreadable(t *testing.T) {
	var logged testenv.LogBuffer
	b := startBroker(t, func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(&logged, nil)) })
	b.auth.storeDown.Store(true)
	for range 30 { // past the failure burst (20)
		_, err := dial(t, b.Addr(), "c1", "d1", "secret-1", nil)
		require.ErrorIs(t, err, pahopackets.ErrorRefusedServerUnavailable)
	}
	assert.Equal(t, 30.0, metric(t, b.reg, "infrawatch_broker_auth_failures_total", map[string]string{"reason": reasonUnavailable}))
	assert.Equal(t, 1, strings.Count(logged.String(), "mqtt logins not checked"), "one log line for the burst, not one per login")
	b.auth.storeDown.Store(false)
	mustDial(t, b.Addr(), "c1", "d1", "secret-1")
}
