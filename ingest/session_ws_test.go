package ingest

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// mosquittoWS starts Mosquitto with a websocket listener on 127.0.0.1 next
// to its MQTT one and returns the broker, the ws:// (or, with secure, the
// wss://) URL and the TLS config that trusts its certificate (nil for
// ws://). Mosquitto 2.0.11 exits at start-up when websocket listeners are
// its only ones, and binds one to every address unless told the socket
// domain.
func mosquittoWS(t *testing.T, persistence string, secure bool) (*testenv.MosquittoServer, string, *tls.Config) {
	t.Helper()
	port := testenv.MustFreePort(t)
	extra := fmt.Sprintf("listener %d 127.0.0.1\nprotocol websockets\nsocket_domain ipv4\npersistence %s", port, persistence)
	scheme, cfg := "ws", (*tls.Config)(nil)
	if secure {
		certFile, keyFile, pool := testenv.TLSCert(t)
		extra += fmt.Sprintf("\ncertfile %s\nkeyfile %s", certFile, keyFile)
		scheme, cfg = "wss", &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{Extra: extra})
	return mq, fmt.Sprintf("%s://127.0.0.1:%d/mqtt", scheme, port), cfg
}

// publishReadings publishes n QoS 1 messages of one reading each, all in
// flight at once, so that ingest stores them in a few batches and
// acknowledges each batch in one burst of PUBACKs.
func publishReadings(t *testing.T, c mqtt.Client, device string, base int64, n int) {
	t.Helper()
	toks := make([]mqtt.Token, n)
	for i := range toks {
		toks[i] = c.Publish("devices/"+device+"/telemetry", 1, false,
			fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, base+int64(i)*10000, i))
	}
	for _, tok := range toks {
		require.True(t, tok.WaitTimeout(10*time.Second), "publish")
		require.NoError(t, tok.Error())
	}
}

// TestSessionPresentOverWebsocket: with a ws:// or wss:// broker URL ingest
// dials the websocket itself (with its TLS config for wss://), reads the
// CONNACK's session-present flag, and reports a lost session as it does
// over tcp:// and ssl:// (TestSessionPresentOverTLS).
// Readings are stored before and after a restart of Mosquitto that keeps the
// session (flag set, nothing counted lost) or forgets it (counted lost); the
// PUBACKs ingest gathers into one websocket message do not upset the broker.
func TestSessionPresentOverWebsocket(t *testing.T) {
	for _, secure := range []bool{false, true} {
		for _, persistence := range []string{"true", "false"} {
			scheme := map[bool]string{false: "ws", true: "wss"}[secure]
			t.Run(scheme+" persistence "+persistence, func(t *testing.T) {
				testSessionOverWebsocket(t, secure, persistence)
			})
		}
	}
}

func testSessionOverWebsocket(t *testing.T, secure bool, persistence string) {
	mq, wsURL, tlsConfig := mosquittoWS(t, persistence, secure)
	e := newEnvWith(t, mq)
	st := e.store
	const device, n = "tc-ws", 500
	in, reg, _ := runIngester(t, Options{
		BrokerURL: wsURL, ClientID: "ingest-ws-" + persistence, TLSConfig: tlsConfig,
		KeepAlive: 2 * time.Second, FlushInterval: 20 * time.Millisecond,
		Writer: st, Lookup: registry{device: counter(device, "traffic_counter")}.lookup,
	})
	require.False(t, in.sessionPresent.Load(), "a new session on the first connection")

	// one reading per device interval (10 s), all in the past
	base := time.Now().Add(-24 * time.Hour).UnixMilli()
	publishReadings(t, e.client(t, "pub-ws-1"), device, base, n)
	e.waitCount(t, reg, "traffic_counter", "flow_vph", n)
	// Acknowledged in bursts: a broker that refused several packets
	// in one websocket message would have dropped the connection.
	assertAccounting(t, reg)
	require.EqualValues(t, 1, in.connections.Load(), "one connection before the restart")
	require.Zero(t, metricValue(t, reg, "infrawatch_ingest_reconnects_total", "", ""))

	restartBroker(t, mq, in)
	kept := persistence == "true"
	assert.Equal(t, kept, in.sessionPresent.Load(), "session present")
	lost := 1.0
	if kept {
		lost = 0
	}
	assert.Equal(t, lost, metricValue(t, reg, "infrawatch_ingest_mqtt_sessions_lost_total", "", ""))

	publishReadings(t, e.client(t, "pub-ws-2"), device, base+n*10000, n)
	e.waitCount(t, reg, "traffic_counter", "flow_vph", 2*n)
}

// TestBrokerConnWebsocketPacketsAcrossMessages: the brokers accept what
// brokerConn sends over a websocket, several MQTT packets in one message
// (its gathered writes) and a packet split over two, and their replies come
// back through it in order. The test records the messages brokerConn sends
// and checks that both shapes were really sent.
func TestBrokerConnWebsocketPacketsAcrossMessages(t *testing.T) {
	t.Run("mosquitto", func(t *testing.T) {
		_, wsURL, _ := mosquittoWS(t, "false", false)
		checkPacketsAcrossMessages(t, wsURL)
	})
	t.Run("mochi", func(t *testing.T) {
		testenv.SkipIfShort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.MustFreePort(t))
		srv := mochi.New(nil)
		require.NoError(t, srv.AddHook(new(auth.AllowHook), nil))
		require.NoError(t, srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: addr})))
		require.NoError(t, srv.Serve())
		t.Cleanup(func() { _ = srv.Close() })
		require.Eventually(t, func() bool {
			c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err == nil {
				_ = c.Close()
			}
			return err == nil
		}, 10*time.Second, 20*time.Millisecond, "mochi's websocket listener is up")
		checkPacketsAcrossMessages(t, "ws://"+addr+"/mqtt")
	})
}

// wsMessages is the websocket connection under a brokerConn. paho's
// websocket conn sends each Write as one binary message (WriteMessage), so
// recording the Writes records the messages brokerConn sent, and where each
// one ends in the byte stream.
type wsMessages struct {
	net.Conn
	mu    sync.Mutex
	sizes []int
	sent  int
	wrote chan struct{} // nudged after every message
}

func (w *wsMessages) Write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	w.mu.Lock()
	w.sizes = append(w.sizes, n)
	w.sent += n
	w.mu.Unlock()
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

// waitSent waits until brokerConn has sent n bytes in all: what was queued
// before has gone out, so the next Write starts a new message.
func (w *wsMessages) waitSent(t *testing.T, n int) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		sent := w.sent
		w.mu.Unlock()
		require.LessOrEqual(t, sent, n, "only the test writes")
		if sent == n {
			return
		}
		select {
		case <-w.wrote:
		case <-deadline.C:
			t.Fatalf("brokerConn sent %d of %d bytes", sent, n)
		}
	}
}

// ends returns where each message sent so far ends in the stream.
func (w *wsMessages) ends() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	end := 0
	for _, n := range w.sizes {
		end += n
		out = append(out, end)
	}
	return out
}

func checkPacketsAcrossMessages(t *testing.T, wsURL string) {
	t.Helper()
	u, err := url.Parse(wsURL)
	require.NoError(t, err)
	var seen []bool
	o := mqtt.NewClientOptions()
	o.ConnectTimeout = 5 * time.Second
	// sessionDialer.open for ws://, with the messages recorded.
	ws, err := dialWebsocket(u, *o)
	require.NoError(t, err)
	msgs := &wsMessages{Conn: ws, wrote: make(chan struct{}, 1)}
	c := newBrokerConn(msgs, func(p bool) { seen = append(seen, p) }, nil, o.WriteTimeout, false)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))

	var one bytes.Buffer // CONNECT, SUBSCRIBE and PINGREQ in one message
	connect := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	connect.ProtocolName, connect.ProtocolVersion = "MQTT", 4
	connect.CleanSession, connect.Keepalive, connect.ClientIdentifier = true, 30, "ws-gather"
	require.NoError(t, connect.Write(&one))
	sub := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	sub.MessageID, sub.Topics, sub.Qoss = 1, []string{"ws/gather"}, []byte{1}
	require.NoError(t, sub.Write(&one))
	require.NoError(t, packets.NewControlPacket(packets.Pingreq).Write(&one))
	_, err = c.Write(one.Bytes())
	require.NoError(t, err)
	msgs.waitSent(t, one.Len())

	var pub bytes.Buffer // two PUBLISHes, the second split over two messages
	var second int       // where the second starts in pub
	for i := range 2 {
		second = pub.Len()
		p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		p.TopicName, p.Qos, p.MessageID, p.Payload = "ws/gather", 1, uint16(10+i), []byte(fmt.Sprintf("payload %d", i))
		require.NoError(t, p.Write(&pub))
	}
	cut := pub.Len() - 5
	_, err = c.Write(pub.Bytes()[:cut])
	require.NoError(t, err)
	msgs.waitSent(t, one.Len()+cut)
	_, err = c.Write(pub.Bytes()[cut:])
	require.NoError(t, err)
	msgs.waitSent(t, one.Len()+pub.Len())

	// The three packets went in one message, and a message ended inside
	// the second PUBLISH: the broker had to join it across two.
	ends := msgs.ends()
	require.Equal(t, one.Len(), ends[0], "CONNECT, SUBSCRIBE and PINGREQ in the first message; messages end at %v", ends)
	start, end := one.Len()+second, one.Len()+pub.Len()
	require.True(t, slices.ContainsFunc(ends, func(e int) bool { return start < e && e < end }),
		"no message ends inside the second PUBLISH (bytes %d to %d); messages end at %v", start, end, ends)

	read := func() packets.ControlPacket {
		t.Helper()
		p, err := packets.ReadPacket(c)
		require.NoError(t, err)
		return p
	}
	ack, ok := read().(*packets.ConnackPacket)
	require.True(t, ok, "CONNACK first")
	require.Equal(t, byte(0), ack.ReturnCode)
	require.Equal(t, []bool{false}, seen, "session-present flag read off the CONNACK")
	suback, ok := read().(*packets.SubackPacket)
	require.True(t, ok, "SUBACK")
	require.Equal(t, []byte{1}, suback.ReturnCodes)
	_, ok = read().(*packets.PingrespPacket)
	require.True(t, ok, "PINGRESP")
	// The broker's PUBACKs and its deliveries of the two messages to our
	// own subscription come in an order of its choosing.
	var acked []uint16
	var got []string
	for len(acked) < 2 || len(got) < 2 {
		switch p := read().(type) {
		case *packets.PubackPacket:
			acked = append(acked, p.MessageID)
		case *packets.PublishPacket:
			got = append(got, string(p.Payload))
			var a bytes.Buffer
			puback := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
			puback.MessageID = p.MessageID
			require.NoError(t, puback.Write(&a))
			_, err := c.Write(a.Bytes())
			require.NoError(t, err)
		default:
			t.Fatalf("unexpected %s", p)
		}
	}
	require.ElementsMatch(t, []uint16{10, 11}, acked)
	require.Equal(t, []string{"payload 0", "payload 1"}, got)
}
