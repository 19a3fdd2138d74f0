package ingest

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"

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

// sessionDialer opens tcp/mqtt and ssl/mqtts connections the way paho does
// (proxy from the environment, TLS with the client's config) and reports
// each connection's session-present flag to onSession.
type sessionDialer struct {
	onSession func(present bool)
}

// dialable reports whether sessionDialer handles the URL's scheme; for the
// others (websockets) paho dials and the flag is not observed.
func (sessionDialer) dialable(scheme string) bool {
	switch scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts":
		return true
	}
	return false
}

func (d sessionDialer) open(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
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
	return &connackConn{Conn: conn, onSession: d.onSession}, nil
}

// connackConn watches the first four bytes read, the MQTT 3.1.1 CONNACK:
// 0x20, remaining length 2, acknowledge flags (bit 0: session present),
// return code. Only paho's reader goroutine reads, one at a time.
type connackConn struct {
	net.Conn
	onSession func(present bool)
	head      [4]byte
	n         int
	done      bool
}

func (c *connackConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
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
