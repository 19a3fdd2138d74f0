package ingest

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// Whether the broker kept ingest's session across a reconnect decides
// whether anything was lost upstream: with the session, the broker queued
// the devices' QoS 1 messages while ingest was away; without it (a broker
// restarted with persistence off or unwritable, or a session expired),
// what devices published between the broker's restart and ingest's new
// subscription was acknowledged to them and routed to nobody. paho reads
// the CONNACK's session-present flag on reconnects but does not expose it,
// so ingest dials the connection itself and reads the flag off the first
// bytes the broker sends.

// sessionDialer opens every connection to an external broker the way paho
// would (tcp/mqtt and ssl/mqtts with the proxy from the environment and the
// client's TLS config; ws and wss with paho's own websocket dialer) and
// reports each connection's session-present flag to onSession.
type sessionDialer struct {
	onSession func(present bool)
	onConn    func(*brokerConn) // told of each new connection
	onSent    func()            // see brokerConn.onSent
}

// dialable reports whether sessionDialer handles the URL's scheme; it is
// also what Options.Validate accepts, so every external broker is dialed
// here.
func (sessionDialer) dialable(scheme string) bool {
	switch scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
		return true
	}
	return false
}

func (d sessionDialer) open(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
	var conn net.Conn
	var err error
	switch uri.Scheme {
	case "ws", "wss":
		conn, err = dialWebsocket(uri, o)
	default:
		conn, err = dialTCP(uri, o)
	}
	if err != nil {
		return nil, err
	}
	// Reads are paced on a plain TCP stream only: a TLS connection returns
	// at most one record per Read and a websocket one message, and brokers
	// write each packet as a record (message) of its own, so one read per
	// readGap would cap ingest at about 1,000 packets/s (see pacedReader).
	paced := uri.Scheme == "tcp" || uri.Scheme == "mqtt"
	c := newBrokerConn(conn, d.onSession, d.onSent, o.WriteTimeout, paced)
	if d.onConn != nil {
		d.onConn(c)
	}
	return c, nil
}

func dialTCP(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
	dialer := o.Dialer
	if dialer == nil {
		dialer = &net.Dialer{Timeout: o.ConnectTimeout}
	}
	conn, err := proxy.FromEnvironmentUsing(dialer).Dial("tcp", uri.Host)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", uri.Host, err)
	}
	switch uri.Scheme {
	case "ssl", "tls", "mqtts":
		cfg := o.TLSConfig
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName = uri.Hostname()
		}
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", uri.Host, err)
		}
		conn = tc
	}
	return conn, nil
}

// dialWebsocket is paho's openConnection for ws and wss, so that headers
// (Options.HTTPHeaders), the proxy (WebsocketOptions.Proxy, else the
// environment's) and TLS behave as when paho dials: the client's TLS config
// for wss only, nil meaning gorilla/websocket's defaults. paho would pass
// what an OnConnectAttempt handler returns instead; ingest sets none.
func dialWebsocket(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
	u := *uri
	u.User = nil // gorilla/websocket refuses a URL with user info (paho #623)
	var tlsc *tls.Config
	if u.Scheme == "wss" {
		tlsc = o.TLSConfig
	}
	conn, err := mqtt.NewWebsocket(u.String(), tlsc, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	if err != nil {
		return nil, fmt.Errorf("open websocket to %s: %w", u.String(), err)
	}
	return conn, nil
}

// brokerConn is ingest's connection to an external broker. Besides watching
// the CONNACK it batches system calls, which were 40 % of ingest's CPU
// behind Mosquitto at 40,000 readings/s: paho reads a packet's header a byte
// at a time straight off the connection (three reads per PUBLISH), and a
// PUBACK per write would be a system call per message, while ingest
// acknowledges a stored batch of thousands at once (chunk.ack queues each
// PUBACK here, paho's writer the other packets). Reads go through a
// buffer; writes are queued and written by one flusher goroutine, so that
// what piles up while it is in a write goes out in the next one (no wait
// when the connection is idle).
// Over a websocket each of those writes is one binary message holding
// several packets (or, were paho to write one in parts, part of one), which
// MQTT allows: receivers must not assume packets align with messages
// (MQTT 3.1.1 §6); Mosquitto and mochi read the messages as one stream.
type brokerConn struct {
	net.Conn
	r *bufio.Reader

	onSession func(present bool)
	// onSent, when set, is called after each write that reached the
	// connection. paho sends a PINGREQ once it has itself sent nothing for
	// a keepalive, which the PUBACKs ingest queues here do not tell it;
	// behind a broker holding a backlog the PINGRESP then queues behind
	// the backlog, arrives after paho's ping timeout, and paho drops the
	// connection, again and again (TestKeepaliveWhileBacklogged).
	onSent func()
	head   [4]byte
	n      int
	done   bool

	// writeTimeout bounds each of the flusher's writes (0: none). paho's
	// own write deadlines frame a Write that now only queues, so they are
	// not passed on (SetWriteDeadline).
	writeTimeout time.Duration

	mu      sync.Mutex
	more    sync.Cond // the flusher waits for bytes or the close
	room    sync.Cond // writers wait while maxQueuedWrite bytes are queued
	queued  []byte
	werr    error
	closing bool
	flushed chan struct{} // closed when the flusher has stopped
}

const (
	// maxQueuedWrite bounds what Write queues before it blocks like a full
	// socket would; 64 KiB is over 16,000 PUBACKs.
	maxQueuedWrite = 64 << 10
	// closeFlushTimeout bounds how long Close waits for queued bytes (the
	// DISCONNECT, the last PUBACKs) to reach a broker that stopped reading.
	closeFlushTimeout = 500 * time.Millisecond
	// writeGap is the least time between the starts of two writes.
	writeGap = time.Millisecond
	// readGap is the least time between the starts of two reads.
	readGap = time.Millisecond
)

// newBrokerConn wraps conn; paced paces its reads (pacedReader), for a
// byte stream only.
func newBrokerConn(conn net.Conn, onSession func(bool), onSent func(), writeTimeout time.Duration, paced bool) *brokerConn {
	var rd io.Reader = conn
	if paced {
		rd = &pacedReader{conn: conn}
	}
	c := &brokerConn{Conn: conn, r: bufio.NewReaderSize(rd, 32<<10), onSession: onSession,
		onSent: onSent, writeTimeout: writeTimeout, flushed: make(chan struct{})}
	c.more.L = &c.mu
	c.room.L = &c.mu
	go c.flush()
	return c
}

// pacedReader reads from the connection at most once per readGap. Under
// load the broker sends a message or two at a time, and reading each as it
// comes costs a system call and a wake-up of paho's reader per read; after
// a pause, what arrived meanwhile comes in one read. A read after a quiet
// spell (longer than readGap) does not wait, nor does one after a read that
// filled its buffer (more is waiting: no need to gather it, and waiting
// would cap a stream of large packets at one buffer per readGap). It is
// for a byte stream only: over TLS or a websocket a Read returns one record
// or message, often one packet, whatever is waiting.
type pacedReader struct {
	conn net.Conn
	last time.Time
	full bool // the last read filled its buffer
}

func (r *pacedReader) Read(p []byte) (int, error) {
	if wait := readGap - time.Since(r.last); wait > 0 && !r.full {
		time.Sleep(wait)
	}
	r.last = time.Now()
	n, err := r.conn.Read(p)
	r.full = n == len(p)
	return n, err
}

// Read watches the first four bytes read, the MQTT 3.1.1 CONNACK: 0x20,
// remaining length 2, acknowledge flags (bit 0: session present), return
// code. Only paho's reader goroutine reads, one at a time.
func (c *brokerConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if !c.done && n > 0 {
		c.n += copy(c.head[c.n:], p[:n])
		if c.n == len(c.head) {
			c.done = true
			if c.head[0] == 0x20 && c.head[1] == 2 && c.head[3] == 0 {
				c.onSession(c.head[2]&1 == 1)
			}
		}
	}
	return n, err
}

// Write queues p for the flusher. A write error is returned by every Write
// after it and also fails the reader (the flusher sets a read deadline in
// the past): the Writes after it are mostly ingest's PUBACKs (puback), whose
// errors paho never sees, and paho's reader reports the failed read, so
// paho drops the connection as it would have on the failed write itself.
// What was queued is redelivered by the broker, as for any connection lost
// before its PUBACKs.
func (c *brokerConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.werr == nil && !c.closing && len(c.queued) >= maxQueuedWrite {
		c.room.Wait()
	}
	if c.werr != nil {
		return 0, c.werr
	}
	if c.closing {
		return 0, net.ErrClosed
	}
	// The flusher waits only on an empty queue: wake it for the first
	// bytes, not for every PUBACK of a burst.
	if len(c.queued) == 0 {
		c.more.Signal()
	}
	c.queued = append(c.queued, p...)
	return len(p), nil
}

func (c *brokerConn) flush() {
	defer close(c.flushed)
	var out []byte
	var last time.Time
	for {
		// ingest acknowledges a stored batch one message at a time (puback);
		// spacing the writes gathers each burst into a few writes and leaves
		// a lone packet (CONNECT, PINGREQ) unhurried.
		if wait := writeGap - time.Since(last); wait > 0 {
			time.Sleep(wait)
		}
		c.mu.Lock()
		for len(c.queued) == 0 && !c.closing {
			c.more.Wait()
		}
		if len(c.queued) == 0 {
			c.mu.Unlock()
			return
		}
		out, c.queued = c.queued, out[:0]
		c.room.Broadcast()
		c.mu.Unlock()
		last = time.Now()
		if c.writeTimeout > 0 {
			_ = c.Conn.SetWriteDeadline(last.Add(c.writeTimeout))
		}
		if _, err := c.Conn.Write(out); err != nil {
			c.mu.Lock()
			c.werr = fmt.Errorf("write to broker: %w", err)
			c.queued = nil
			c.room.Broadcast()
			c.mu.Unlock()
			// Fail paho's reader, which reports it (not a Close: paho takes
			// "use of closed network connection" for its own shutdown and
			// reports nothing): ingest's PUBACKs would otherwise be dropped
			// unseen until paho's keepalive gave up on the connection.
			_ = c.Conn.SetReadDeadline(time.Now())
			return
		}
		if c.onSent != nil {
			c.onSent()
		}
	}
}

// puback queues the PUBACK of QoS 1 message mid (MQTT 3.1.1 §3.4). A
// failed connection drops it: the broker sends the message again (and the
// failed reader makes paho reconnect, see Write).
func (c *brokerConn) puback(mid uint16) {
	p := [4]byte{0x40, 2, byte(mid >> 8), byte(mid)}
	_, _ = c.Write(p[:])
}

// SetDeadline sets the read deadline only (paho's wait for the CONNACK);
// see SetWriteDeadline.
func (c *brokerConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// SetWriteDeadline does nothing: paho sets one around each Write, which
// only queues; the flusher bounds its writes with writeTimeout instead, so
// a broker that stops reading fails the writes (and then Write) rather than
// blocking them.
func (c *brokerConn) SetWriteDeadline(time.Time) error { return nil }

// Close writes what is queued (paho closes right after its DISCONNECT),
// waiting at most closeFlushTimeout for a broker that stopped reading, then
// closes the connection, which also ends a write still blocked.
func (c *brokerConn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.more.Signal()
	c.room.Broadcast()
	c.mu.Unlock()
	t := time.NewTimer(closeFlushTimeout)
	defer t.Stop()
	select {
	case <-c.flushed:
	case <-t.C:
	}
	err := c.Conn.Close()
	<-c.flushed
	return err
}
