package ingest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// brokerMessage stands in for paho's message (its type is unexported):
// what ingest reads of a message from an external broker.
type brokerMessage struct {
	topic   string
	payload []byte
	qos     byte
	mid     uint16
	acks    atomic.Int32 // calls of Ack, paho's own acknowledgement
}

func (m *brokerMessage) Duplicate() bool   { return false }
func (m *brokerMessage) Qos() byte         { return m.qos }
func (m *brokerMessage) Retained() bool    { return false }
func (m *brokerMessage) Topic() string     { return m.topic }
func (m *brokerMessage) MessageID() uint16 { return m.mid }
func (m *brokerMessage) Payload() []byte   { return m.payload }
func (m *brokerMessage) Ack()              { m.acks.Add(1) }

// TestPubackOnArrivalConnection: a QoS 1 message from an external broker
// is acknowledged once it is stored, by a PUBACK with its id on the
// connection it arrived on, never on a later one: a message whose
// connection dropped before it was stored gets no PUBACK at all (the
// broker sends it again), as paho drops an Ack after its connection
// went. A QoS 0 message is left to its own Ack.
func TestPubackOnArrivalConnection(t *testing.T) {
	const id = "tc-0001"
	w := &gateWriter{gate: make(chan struct{})}
	in, err := New(Options{Local: &fakeLocal{}, Lookup: registry{id: counter(id, "traffic_counter")}.lookup,
		Writer: w, Workers: 1, DeviceRateLimit: -1, FlushInterval: 10 * time.Millisecond,
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	msg := func(qos byte, mid uint16) *brokerMessage {
		return &brokerMessage{topic: "devices/" + id + "/telemetry", qos: qos, mid: mid,
			payload: fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, time.Now().UnixMilli(), mid)}
	}
	gone, peerGone := loopbackPair(t, func(bool) {}, 0)
	lost := msg(1, 0x0102)
	in.conn.Store(gone)
	in.onMessage(nil, lost)
	require.Eventually(t, func() bool { return w.inFlight.Load() == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, gone.Close()) // paho closes a lost connection, then dials the next

	cur, peerCur := loopbackPair(t, func(bool) {}, 0)
	in.conn.Store(cur)
	stored, q0 := msg(1, 0x0304), msg(0, 0)
	in.onMessage(nil, stored)
	in.onMessage(nil, q0)
	close(w.gate)

	require.NoError(t, peerCur.SetReadDeadline(time.Now().Add(5*time.Second)))
	got := make([]byte, 4)
	_, err = io.ReadFull(peerCur, got)
	require.NoError(t, err)
	require.Equal(t, []byte{0x40, 2, 0x03, 0x04}, got, "the stored message's PUBACK")
	require.Eventually(t, func() bool { return w.points.Load() == 3 }, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return q0.acks.Load() == 1 }, 5*time.Second, time.Millisecond)
	require.Zero(t, lost.acks.Load()+stored.acks.Load(), "QoS 1 messages are not left to paho's Ack")

	// Nothing else on either connection: no PUBACK for the message of the
	// dropped one, here or there, and no second one.
	require.NoError(t, peerCur.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	n, err := peerCur.Read(got)
	require.Zero(t, n)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout())
	rest, err := io.ReadAll(peerGone)
	require.NoError(t, err)
	require.Empty(t, rest)
}

// TestChunkAcksOnce: a chunk acknowledged twice sends one PUBACK, as
// paho's Ack is once only.
func TestChunkAcksOnce(t *testing.T) {
	conn, peer := loopbackPair(t, func(bool) {}, 0)
	m := &brokerMessage{qos: 1, mid: 7}
	c := &chunk{msg: m, conn: conn, mid: m.mid}
	c.ack()
	c.ack()
	require.NoError(t, conn.Close())
	b, err := io.ReadAll(peer)
	require.NoError(t, err)
	require.Equal(t, []byte{0x40, 2, 0, 7}, b)
	require.Zero(t, m.acks.Load())
}

// TestKeepaliveWhileBacklogged: ingest's PUBACKs keep its connection
// alive in paho's eyes. paho sends a PINGREQ when it has sent nothing for a
// keepalive; behind a broker holding a backlog, the PINGRESP queues behind
// it and arrives after the ping timeout, and paho drops the connection,
// again and again, never catching up. Here a backlog of several seconds
// drains over a 1 s keepalive on one connection.
func TestKeepaliveWhileBacklogged(t *testing.T) {
	const id, n = "tc-0001", 6000
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	w := &discardWriter{delay: 100 * time.Millisecond}
	in, reg, _ := runIngester(t, Options{BrokerURL: mq.URL, ClientID: "ingest-backlog",
		Lookup: registry{id: counter(id, "traffic_counter")}.lookup, DeviceRateLimit: -1,
		Writer: w, BatchSize: 100, WriteConcurrency: 1, QueueSize: 200, KeepAlive: time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	// The dialer reports its connection, which onMessage hands on for the
	// PUBACKs (TestPubackOnArrivalConnection); without it they would fall
	// back to paho's Ack and this test would pass regardless.
	require.NotNil(t, in.conn.Load())

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL).SetClientID("backlog-publisher").SetMaxResumePubInFlight(n))
	tok := pub.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { pub.Disconnect(100) })
	base := time.Now().UnixMilli() - n
	toks := make([]mqtt.Token, n)
	for i := range toks {
		toks[i] = pub.Publish("devices/"+id+"/telemetry", 1, false, fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, base+int64(i), i))
	}
	for _, tok := range toks {
		require.True(t, tok.WaitTimeout(10*time.Second), "publish")
		require.NoError(t, tok.Error())
	}

	require.Eventually(t, func() bool { return w.points.Load() >= n }, 60*time.Second, 10*time.Millisecond)
	require.EqualValues(t, 1, in.connections.Load(), "one connection throughout")
	require.EqualValues(t, n, w.points.Load(), "nothing delivered twice")
	require.Zero(t, metricValue(t, reg, "infrawatch_ingest_mqtt_reconnects_total", "", ""))
}
