package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// fakeBroker speaks just enough MQTT 3.1.1 to check what the raw
// publisher sends: it records CONNECTs and PUBLISHes and answers with a
// chosen CONNACK code and, when acking, PUBACKs.
type fakeBroker struct {
	ln          net.Listener
	connackCode byte
	noPuback    bool

	mu        sync.Mutex
	connects  []packets.ConnectParams
	published map[string][][]byte // topic → payloads in arrival order
	received  int
	pings     int
	conns     []net.Conn
	wg        sync.WaitGroup
}

func startFakeBroker(t *testing.T, connackCode byte, puback bool) *fakeBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &fakeBroker{ln: ln, connackCode: connackCode, noPuback: !puback, published: map[string][][]byte{}}
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *fakeBroker) url() string { return "tcp://" + b.ln.Addr().String() }

func (b *fakeBroker) accept() {
	defer b.wg.Done()
	for {
		nc, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns = append(b.conns, nc)
		b.mu.Unlock()
		b.wg.Add(1)
		go b.serve(nc)
	}
}

func (b *fakeBroker) serve(nc net.Conn) {
	defer b.wg.Done()
	defer nc.Close()
	br := bufio.NewReader(nc)
	var out bytes.Buffer
	for {
		fh, body, err := readPacket(br, nil)
		if err != nil {
			return
		}
		pk := packets.Packet{ProtocolVersion: 4, FixedHeader: fh}
		out.Reset()
		switch fh.Type {
		case packets.Connect:
			if pk.ConnectDecode(body) != nil {
				return
			}
			b.mu.Lock()
			b.connects = append(b.connects, pk.Connect)
			b.mu.Unlock()
			ack := packets.Packet{ProtocolVersion: 4, FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: b.connackCode}
			_ = ack.ConnackEncode(&out)
		case packets.Publish:
			if pk.PublishDecode(body) != nil {
				return
			}
			b.mu.Lock()
			b.published[pk.TopicName] = append(b.published[pk.TopicName], bytes.Clone(pk.Payload))
			b.received++
			b.mu.Unlock()
			if fh.Qos == 1 && !b.noPuback {
				ack := packets.Packet{ProtocolVersion: 4, FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
				_ = ack.PubackEncode(&out)
			}
		case packets.Pingreq:
			b.mu.Lock()
			b.pings++
			b.mu.Unlock()
			resp := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
			_ = resp.PingrespEncode(&out)
		case packets.Disconnect:
			return
		}
		if out.Len() > 0 {
			if _, err := nc.Write(out.Bytes()); err != nil {
				return
			}
		}
	}
}

func (b *fakeBroker) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.received
}

// benchConns makes n conns named as Run names them.
func benchConns(n int) []*conn {
	conns := make([]*conn, n)
	for i := range conns {
		id := "bench-t-" + strconv.Itoa(i)
		conns[i] = &conn{id: id, topic: "devices/" + id + "/telemetry"}
	}
	return conns
}

// publishFleet publishes perConn readings on each conn as Run does and
// closes the ack deadline wait after everything was handed over.
func publishFleet(ctx context.Context, o Options, conns []*conn, perConn int64, wait time.Duration) {
	start := o.Now()
	deadline := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range conns {
		c.total = perConn
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.publish(ctx, o, start, deadline)
		}()
	}
	for _, c := range conns {
		<-c.handed
	}
	t := time.AfterFunc(wait, func() { close(deadline) })
	defer t.Stop()
	wg.Wait()
}

type fleetCounts struct{ sent, acked, failed int64 }

func counts(conns []*conn) fleetCounts {
	var f fleetCounts
	for _, c := range conns {
		f.sent += c.nSent.Load()
		f.acked += c.acked.Load()
		f.failed += c.failed.Load()
	}
	return f
}

// wantReadings checks that each topic got the readings reading() makes,
// byte for byte, in order (a reading's ts says which now it was built at).
func wantReadings(t *testing.T, published map[string][][]byte, conns []*conn, perConn int) {
	t.Helper()
	for _, c := range conns {
		got := published[c.topic]
		require.Equal(t, perConn, len(got), c.topic)
		ref := &conn{}
		for seq, p := range got {
			i := bytes.IndexByte(p, ',')
			require.Positive(t, i, "%s", p)
			ts, err := strconv.ParseInt(string(p[len(`{"ts":`):i]), 10, 64)
			require.NoError(t, err, "%s", p)
			want, _ := ref.reading(time.UnixMilli(ts), int64(seq))
			require.Equal(t, string(want), string(p))
		}
	}
}

func TestRawPublisherFakeBroker(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		t.Run("qos"+strconv.Itoa(int(qos)), func(t *testing.T) {
			b := startFakeBroker(t, 0, true)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			o := Options{BrokerURL: b.url(), Duration: 300 * time.Millisecond, QoS: qos, Now: time.Now}
			conns := benchConns(3)
			secrets := map[string]string{conns[0].id: "s0", conns[1].id: "s1"} // conns[2]: anonymous
			require.NoError(t, connectAll(ctx, o, conns, secrets))
			defer disconnectAll(conns)
			publishFleet(ctx, o, conns, 50, 10*time.Second)

			assert.Equal(t, fleetCounts{sent: 150, acked: 150}, counts(conns))
			// QoS 0 is acknowledged once written, maybe before it is read.
			require.Eventually(t, func() bool { return b.count() == 150 }, 10*time.Second, time.Millisecond)
			b.mu.Lock()
			defer b.mu.Unlock()
			wantReadings(t, b.published, conns, 50)
			require.Len(t, b.connects, 3)
			byID := map[string]packets.ConnectParams{}
			for _, cp := range b.connects {
				byID[cp.ClientIdentifier] = cp
			}
			for i, c := range conns {
				cp := byID[c.id]
				assert.True(t, cp.Clean, c.id)
				assert.Equal(t, uint16(30), cp.Keepalive)
				if i < 2 {
					assert.Equal(t, c.id, string(cp.Username))
					assert.Equal(t, secrets[c.id], string(cp.Password))
				} else {
					assert.False(t, cp.UsernameFlag)
					assert.False(t, cp.PasswordFlag)
				}
			}
		})
	}
}

func TestRawPublisherAckDeadline(t *testing.T) {
	b := startFakeBroker(t, 0, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := Options{BrokerURL: b.url(), Duration: 100 * time.Millisecond, QoS: 1, Now: time.Now}
	conns := benchConns(2)
	require.NoError(t, connectAll(ctx, o, conns, nil))
	defer disconnectAll(conns)
	publishFleet(ctx, o, conns, 20, 200*time.Millisecond)
	assert.Equal(t, fleetCounts{sent: 40, failed: 40}, counts(conns), "no PUBACK before the deadline: all failed")
	assert.Equal(t, 40, b.count())
}

// TestRawPublisherInflightBound: without PUBACKs a connection stops at
// maxInflight unacknowledged publishes, as with paho.
func TestRawPublisherInflightBound(t *testing.T) {
	b := startFakeBroker(t, 0, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := Options{BrokerURL: b.url(), Duration: 100 * time.Millisecond, QoS: 1, Now: time.Now}
	conns := benchConns(1)
	require.NoError(t, connectAll(ctx, o, conns, nil))
	defer disconnectAll(conns)
	c := conns[0]
	c.total = maxInflight + 10
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.publish(ctx, o, o.Now(), make(chan struct{}))
	}()
	require.Eventually(t, func() bool { return b.count() == maxInflight }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(200 * time.Millisecond) // would it send more?
	assert.Equal(t, maxInflight, b.count())
	cancel()
	<-done
	f := counts(conns)
	assert.Equal(t, int64(maxInflight+1), f.sent, "the one waiting for a slot was handed over")
	assert.Equal(t, int64(maxInflight), f.failed, "outstanding at cancel")
	assert.Zero(t, f.acked)
}

// TestRawPublisherKeepAlive: an idle connection pings, so the broker
// keeps it through the drain after publishing.
func TestRawPublisherKeepAlive(t *testing.T) {
	defer func(d time.Duration) { rawPingEvery = d }(rawPingEvery)
	rawPingEvery = 20 * time.Millisecond
	b := startFakeBroker(t, 0, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := Options{BrokerURL: b.url(), Duration: time.Second, QoS: 1, Now: time.Now}
	conns := benchConns(1)
	require.NoError(t, connectAll(ctx, o, conns, nil))
	defer disconnectAll(conns)
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.pings >= 3
	}, 10*time.Second, 5*time.Millisecond)
	select {
	case <-conns[0].raw.down:
		t.Fatal("connection down: PINGRESP mishandled")
	default:
	}
}

func TestRawPublisherConnectRefused(t *testing.T) {
	b := startFakeBroker(t, packets.Err3NotAuthorized.Code, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := Options{BrokerURL: b.url(), Duration: time.Second, QoS: 1, Now: time.Now}
	conns := benchConns(2)
	err := connectAll(ctx, o, conns, map[string]string{conns[0].id: "bad", conns[1].id: "bad"})
	disconnectAll(conns)
	require.Error(t, err)
	assert.True(t, errors.Is(err, errConnectRefused), err.Error())
	assert.Contains(t, err.Error(), "return code 5")

	o.Publisher = "mosquitto"
	assert.ErrorContains(t, o.Validate(), `publisher: "mosquitto" is not raw or paho`)
}

// TestRawPublisherMosquittoAnonymous publishes through a real Mosquitto
// without credentials: every acknowledged reading reaches a subscriber,
// byte for byte.
func TestRawPublisherMosquittoAnonymous(t *testing.T) {
	testenv.SkipIfShort(t)
	if _, err := MosquittoPath(); err != nil {
		t.Skip(err)
	}
	m := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var (
		mu        sync.Mutex
		published = map[string][][]byte{}
		received  atomic.Int64
	)
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL).SetClientID("rawpub-test-sub").
		SetOrderMatters(true).SetCleanSession(true))
	tok := sub.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	defer sub.Disconnect(100)
	tok = sub.Subscribe("devices/+/telemetry", 1, func(_ mqtt.Client, msg mqtt.Message) {
		mu.Lock()
		published[msg.Topic()] = append(published[msg.Topic()], bytes.Clone(msg.Payload()))
		mu.Unlock()
		received.Add(1)
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	for _, qos := range []byte{1, 0} {
		mu.Lock()
		clear(published)
		mu.Unlock()
		received.Store(0)
		o := Options{BrokerURL: m.URL, Duration: time.Second, QoS: qos, Now: time.Now}
		conns := benchConns(10)
		require.NoError(t, connectAll(ctx, o, conns, nil), "qos %d", qos)
		publishFleet(ctx, o, conns, 100, 10*time.Second)
		f := counts(conns)
		assert.Equal(t, fleetCounts{sent: 1000, acked: 1000}, f, "qos %d", qos)
		assert.Eventually(t, func() bool { return received.Load() >= f.acked }, 10*time.Second, 10*time.Millisecond, "qos %d", qos)
		disconnectAll(conns)
		mu.Lock()
		wantReadings(t, published, conns, 100)
		mu.Unlock()
		assert.Equal(t, f.acked, received.Load(), "qos %d: acknowledged == received", qos)
	}
}

// TestRawPublisherEmbeddedBroker runs the bench with each publisher
// against infrawatch's embedded broker, which requires the devices'
// credentials: every acknowledged reading is stored.
func TestRawPublisherEmbeddedBroker(t *testing.T) {
	testenv.SkipIfShort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sys := startTestSystem(ctx, t)

	for _, pub := range []string{PublisherRaw, PublisherPaho} {
		o := sys.Options()
		o.Devices, o.Rate, o.Duration, o.QoS, o.Publisher = 20, 1000, 2*time.Second, 1, pub
		r, err := Run(ctx, o)
		require.NoError(t, err, pub)
		assert.Equal(t, int64(2000), r.Sent, pub)
		assert.Equal(t, r.Sent, r.Acknowledged, pub)
		assert.Equal(t, r.Acknowledged, r.Stored, "%s: acknowledged == stored", pub)
		assert.True(t, r.ZeroLoss(), pub)
		assert.InDelta(t, 1000, r.SendRate, 100, pub)
	}

	// The broker refuses a device with a wrong password.
	o := sys.Options()
	o.QoS = 1
	conns := benchConns(1)
	err := connectAll(ctx, o, conns, map[string]string{conns[0].id: "wrong"})
	disconnectAll(conns)
	require.Error(t, err)
	assert.True(t, errors.Is(err, errConnectRefused), err.Error())
}
