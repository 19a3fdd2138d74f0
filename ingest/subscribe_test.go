package ingest

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/require"
)

// silentBroker answers CONNECTs and then reads and ignores everything: it
// never sends a SUBACK.
func silentBroker(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				if _, err := packets.ReadPacket(c); err != nil {
					return
				}
				if err := packets.NewControlPacket(packets.Connack).Write(c); err != nil {
					return
				}
				for {
					if _, err := packets.ReadPacket(c); err != nil {
						return
					}
				}
			})
		}
	})
	return "tcp://" + ln.Addr().String()
}

// resumeFirstStore makes paho's resume after a connect (the second All; the
// first is Connect's, before the connection, with ConnectRetry) wait until
// OnConnect's SUBSCRIBE is stored: the interleaving in which resume sends
// it again.
type resumeFirstStore struct {
	*mqtt.MemoryStore
	alls       atomic.Int32
	subscribe  chan struct{}
	subscribed sync.Once
}

func (s *resumeFirstStore) Put(key string, p packets.ControlPacket) {
	s.MemoryStore.Put(key, p)
	if _, ok := p.(*packets.SubscribePacket); ok {
		s.subscribed.Do(func() { close(s.subscribe) })
	}
}

func (s *resumeFirstStore) All() []string {
	if s.alls.Add(1) > 1 {
		select {
		case <-s.subscribe:
		case <-time.After(5 * time.Second):
		}
	}
	return s.MemoryStore.All()
}

// TestSubscribeWaitsForSUBACK: with ResumeSubs, paho's resume sends the
// SUBSCRIBE that OnConnect stored again, under the same message id, and in
// claiming the id completes OnConnect's token without a SUBACK. subscribe
// must not take that for a subscription (ingest's readiness, Connected,
// rests on it): here the broker never answers, so any success is false.
// Ingest itself leaves ResumeSubs off (TestIngestDoesNotResumeSubs).
func TestSubscribeWaitsForSUBACK(t *testing.T) {
	store := &resumeFirstStore{MemoryStore: mqtt.NewMemoryStore(), subscribe: make(chan struct{})}
	errs := make(chan error, 1)
	o := mqtt.NewClientOptions().AddBroker(silentBroker(t)).SetClientID("resume-race").
		SetCleanSession(false).SetResumeSubs(true).SetStore(store).SetConnectRetry(true).SetAutoReconnect(false).
		SetOnConnectHandler(func(c mqtt.Client) {
			errs <- subscribe(context.Background(), c, map[string]byte{TopicDeviceTelemetry: 1}, 3*time.Second)
		})
	c := mqtt.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "connect")
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(0) })
	select {
	case err := <-errs:
		require.ErrorContains(t, err, "no SUBACK", "the broker never acknowledged the subscription")
	case <-time.After(10 * time.Second):
		t.Fatal("subscribe did not return")
	}
}

// TestIngestDoesNotResumeSubs: see TestSubscribeWaitsForSUBACK.
func TestIngestDoesNotResumeSubs(t *testing.T) {
	in, err := New(Options{BrokerURL: "tcp://127.0.0.1:1883", Lookup: registry{}.lookup, Writer: new(discardWriter)})
	require.NoError(t, err)
	o := in.client.OptionsReader()
	require.False(t, o.CleanSession(), "a persistent session keeps the subscriptions")
	require.False(t, o.ResumeSubs())
}
