package ingest

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// TestSessionPresentOverTLS: ingest dials the broker itself (ssl://, with
// its TLS config) to read the CONNACK's session-present flag. Across a
// restart of a Mosquitto that keeps sessions nothing is counted; across a
// restart of one that forgets them, the lost session is.
func TestSessionPresentOverTLS(t *testing.T) {
	for _, tc := range []struct {
		persistence string
		lost        float64
	}{{"true", 0}, {"false", 1}} {
		t.Run("persistence "+tc.persistence, func(t *testing.T) {
			certFile, keyFile, pool := testenv.TLSCert(t)
			mq := testenv.Mosquitto(t, testenv.MosquittoOptions{
				Extra: fmt.Sprintf("certfile %s\nkeyfile %s\npersistence %s", certFile, keyFile, tc.persistence)})
			st := newEnvWith(t, mq).store
			in, reg, _ := runIngester(t, Options{
				BrokerURL: fmt.Sprintf("ssl://127.0.0.1:%d", mq.Port), ClientID: "ingest-tls-" + tc.persistence,
				TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				KeepAlive: 2 * time.Second, Writer: st, Lookup: registry{}.lookup,
			}) // connected over TLS

			restartBroker(t, mq, in)
			require.Equal(t, tc.lost, metricValue(t, reg, "infrawatch_ingest_mqtt_sessions_lost_total", "", ""))
		})
	}
}

// loopbackPair returns both ends of a real loopback TCP connection, the
// client end wrapped as ingest wraps its broker connection.
func loopbackPair(t *testing.T, onSession func(bool), writeTimeout time.Duration) (*brokerConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	peer := <-accepted
	require.NotNil(t, peer)
	t.Cleanup(func() { _ = peer.Close() })
	c := newBrokerConn(&countingConn{Conn: raw}, onSession, nil, writeTimeout, true)
	t.Cleanup(func() { _ = c.Close() })
	return c, peer
}

// countingConn counts the reads and writes that reach the connection
// (system calls).
type countingConn struct {
	net.Conn
	reads, writes atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// writeUntilError writes 16 KiB chunks to c until a write fails, and sends
// that error.
func writeUntilError(c *brokerConn) <-chan error {
	failed := make(chan error, 1)
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				failed <- err
				return
			}
		}
	}()
	return failed
}

// TestBrokerConnWrites: writes from several goroutines (paho's writer and
// the acknowledgers) all arrive, each writer's in order, fewer system calls
// than writes; Close sends what is still queued before it closes.
func TestBrokerConnWrites(t *testing.T) {
	c, peer := loopbackPair(t, func(bool) {}, 0)
	const writers, each = 4, 5000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				// a PUBACK-sized record: writer, sequence number
				_, err := c.Write([]byte{byte(w), byte(i >> 16), byte(i >> 8), byte(i)})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	wg.Wait()
	require.NoError(t, c.Close())
	b := <-got
	require.Len(t, b, writers*each*4, "every byte written before Close arrives")
	next := make([]int, writers)
	for i := 0; i < len(b); i += 4 {
		w, n := int(b[i]), int(b[i+1])<<16|int(b[i+2])<<8|int(b[i+3])
		require.Equal(t, next[w], n, "writer %d in order", w)
		next[w]++
	}
	writes := c.Conn.(*countingConn).writes.Load()
	require.Less(t, writes, int64(writers*each/10), "writes gathered: %d system calls for %d writes", writes, writers*each)
	_, err := c.Write([]byte{1})
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestBrokerConnReadsGathered: a broker sending one small packet after
// another is read at most once per readGap, several packets per system
// call, every byte in order.
func TestBrokerConnReadsGathered(t *testing.T) {
	c, peer := loopbackPair(t, func(bool) {}, 0)
	const records = 3000
	start := time.Now()
	go func() {
		for i := range records {
			_, _ = peer.Write([]byte{0x30, byte(i >> 16), byte(i >> 8), byte(i)})
			// 50 µs apart: finer than a sleep can wait
			for start := time.Now(); time.Since(start) < 50*time.Microsecond; {
			}
		}
	}()
	b := make([]byte, 4)
	for i := range records {
		_, err := io.ReadFull(c, b)
		require.NoError(t, err)
		require.Equal(t, i, int(b[1])<<16|int(b[2])<<8|int(b[3]))
	}
	took := time.Since(start)
	reads := c.Conn.(*countingConn).reads.Load()
	require.LessOrEqual(t, reads, int64(took/readGap)+2, "%d system calls for %d packets in %v", reads, records, took)
	require.Less(t, reads, int64(records/2), "%d system calls for %d packets in %v", reads, records, took)
}

// TestBrokerConnStalledPeer: a broker that stops reading makes Write block
// once the queue is full (as a full socket would) and Close still returns,
// after at most closeFlushTimeout, with the blocked writer released.
func TestBrokerConnStalledPeer(t *testing.T) {
	c, _ := loopbackPair(t, func(bool) {}, 0)
	blocked := writeUntilError(c)
	// The kernel's buffers fill, then the queue: the writer stays blocked.
	select {
	case err := <-blocked:
		t.Fatalf("write to a stalled peer returned %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	require.NoError(t, c.Close())
	require.Less(t, time.Since(start), closeFlushTimeout+time.Second)
	require.ErrorIs(t, <-blocked, net.ErrClosed)
}

// TestBrokerConnWriteError: once a write fails (the broker reset the
// connection), the next Write reports it, so paho drops the connection.
func TestBrokerConnWriteError(t *testing.T) {
	c, peer := loopbackPair(t, func(bool) {}, 0)
	require.NoError(t, peer.(*net.TCPConn).SetLinger(0))
	require.NoError(t, peer.Close()) // RST
	require.Eventually(t, func() bool {
		_, err := c.Write(make([]byte, 1024))
		return err != nil
	}, 10*time.Second, time.Millisecond)
}

// TestBrokerConnReadsCONNACK: the session-present flag is read off the
// CONNACK however the reads split it, and the buffered reader hands on
// every byte after it.
func TestBrokerConnReadsCONNACK(t *testing.T) {
	for _, present := range []bool{false, true} {
		var seen []bool
		c, peer := loopbackPair(t, func(p bool) { seen = append(seen, p) }, 0)
		flags := byte(0)
		if present {
			flags = 1
		}
		msg := append([]byte{0x20, 2, flags, 0}, []byte("rest of the stream")...)
		go func() {
			for _, b := range msg { // one byte per segment
				_, _ = peer.Write([]byte{b})
				time.Sleep(time.Millisecond)
			}
			_ = peer.Close()
		}()
		var got []byte
		one := make([]byte, 1)
		for {
			n, err := c.Read(one)
			got = append(got, one[:n]...)
			if err != nil {
				break
			}
		}
		require.Equal(t, msg, got)
		require.Equal(t, []bool{present}, seen)
	}
}

// TestBrokerConnWriteTimeout: with a write timeout (paho's WriteTimeout),
// a broker that stops reading fails the writes within it, where the
// deadlines paho sets around each queued Write would not: Write then
// reports the error, and paho drops the connection.
func TestBrokerConnWriteTimeout(t *testing.T) {
	c, _ := loopbackPair(t, func(bool) {}, 200*time.Millisecond)
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(time.Hour)), "paho's deadline is not passed on")
	failed := writeUntilError(c)
	select {
	case err := <-failed:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	case <-time.After(10 * time.Second):
		t.Fatal("writes to a broker that stopped reading never failed")
	}
	// The reader fails too, so paho drops the connection even when the
	// writes after the failed one are ingest's PUBACKs, whose errors paho
	// never sees (the broker here sends nothing: the read would block).
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		read <- err
	}()
	select {
	case err := <-read:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("a failed write left the reader waiting")
	}
}

// TestBrokerConnTLSReadsUnpaced: over ssl:// each Read returns at most one
// TLS record, and brokers write each packet as a record of its own: reads
// paced at one per readGap would take in at most about 1,000 packets/s.
// 3,000 one-record packets must arrive well within the 3 s that would take.
func TestBrokerConnTLSReadsUnpaced(t *testing.T) {
	certFile, keyFile, pool := testenv.TLSCert(t)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	defer ln.Close()
	const records = 3000
	go func() {
		peer, err := ln.Accept()
		if err != nil {
			return
		}
		defer peer.Close()
		for i := range records { // one Write, one record
			if _, err := peer.Write([]byte{0x30, byte(i >> 16), byte(i >> 8), byte(i)}); err != nil {
				return
			}
		}
		_, _ = io.Copy(io.Discard, peer) // until the client closes
	}()
	u, err := url.Parse("ssl://" + ln.Addr().String())
	require.NoError(t, err)
	o := mqtt.NewClientOptions().SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}).
		SetConnectTimeout(5 * time.Second)
	conn, err := sessionDialer{onSession: func(bool) {}}.open(u, *o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	start := time.Now()
	b := make([]byte, 4)
	for i := range records {
		_, err := io.ReadFull(conn, b)
		require.NoError(t, err)
		require.Equal(t, i, int(b[1])<<16|int(b[2])<<8|int(b[3]))
	}
	// paced, they would take at least records × readGap = 3 s
	require.Less(t, time.Since(start), 2*time.Second, "%d records over TLS", records)
}

// restartBroker stops and starts mq and waits until in, connected once
// before, has reconnected and subscribed.
func restartBroker(t *testing.T, mq *testenv.MosquittoServer, in *Ingester) {
	t.Helper()
	mq.Stop()
	require.NoError(t, mq.Start())
	require.Eventually(t, func() bool { return in.connections.Load() == 2 && in.Connected() },
		30*time.Second, 50*time.Millisecond, "reconnected to the restarted broker")
}
