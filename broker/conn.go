package broker

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// deadlineSlack is how much later than asked a client's keepalive deadline
// may fire (see deadlineConn).
const deadlineSlack = time.Second

// tcpListener is mochi's TCP listener whose connections are deadlineConns.
// It also counts the connections being served, so that Close can wait for
// them before mochi's server.Close: mochi adds to a WaitGroup as a
// connection is attached and waits on it in Close without ordering the two,
// which the race detector reports when a connection arrives or ends while
// the broker closes.
type tcpListener struct {
	*listeners.TCP

	mu      sync.Mutex
	active  int
	closing bool
	idle    chan struct{} // closed when closing and active is 0
}

func newTCPListener(tcp *listeners.TCP) *tcpListener {
	return &tcpListener{TCP: tcp, idle: make(chan struct{})}
}

// Serve accepts connections until the listener is closed.
func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	l.TCP.Serve(func(id string, c net.Conn) error {
		l.mu.Lock()
		if l.closing {
			l.mu.Unlock()
			return c.Close()
		}
		l.active++
		l.mu.Unlock()
		defer func() {
			l.mu.Lock()
			l.active--
			if l.closing && l.active == 0 {
				close(l.idle)
			}
			l.mu.Unlock()
		}()
		return establish(id, &deadlineConn{Conn: c})
	})
}

// quiesce refuses new connections and waits, at most wait, until the ones
// being served have ended (their clients disconnected).
func (l *tcpListener) quiesce(wait time.Duration) {
	l.mu.Lock()
	if !l.closing {
		l.closing = true
		if l.active == 0 {
			close(l.idle)
		}
	}
	l.mu.Unlock()
	select {
	case <-l.idle:
	case <-time.After(wait):
	}
}

// deadlineConn moves the connection's deadline only when it has to. Mochi
// sets the keepalive deadline (1.5 × keepalive from now) before reading
// each packet, and each call re-arms a runtime timer under the
// connection's lock. Here a deadline in place is kept as long as it lies
// between the one asked for and deadlineSlack after it, so a busy client
// re-arms its timer about once a second, and a silent one is still cut off
// at most deadlineSlack later than MQTT's 1.5 × keepalive.
//
// Only mochi's read loop calls SetDeadline; the PUBACK writer sets write
// deadlines from another goroutine. A write deadline set between a
// SetDeadline and its bookkeeping may leave the cache claiming a write
// deadline that was replaced: the writer clears its deadline after each
// write anyway, so mochi's writes were never bounded by the keepalive
// deadline for long; the read deadline, which enforces the keepalive, is
// only ever set here.
type deadlineConn struct {
	net.Conn
	set atomic.Int64 // UnixNano of the deadline last set by SetDeadline; 0: unknown
}

// SetDeadline sets the read and write deadline, unless the one in place is
// at most deadlineSlack later than t.
func (c *deadlineConn) SetDeadline(t time.Time) error {
	if !t.IsZero() {
		if set := c.set.Load(); set != 0 {
			if ahead := time.Duration(set - t.UnixNano()); ahead >= 0 && ahead <= deadlineSlack {
				return nil
			}
		}
		t = t.Add(deadlineSlack)
	}
	c.set.Store(0)
	if err := c.Conn.SetDeadline(t); err != nil {
		return err
	}
	if !t.IsZero() {
		c.set.Store(t.UnixNano())
	}
	return nil
}

// SetReadDeadline sets the read deadline; the next SetDeadline sets both
// again.
func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.set.Store(0)
	return c.Conn.SetReadDeadline(t)
}

// SetWriteDeadline sets the write deadline; the next SetDeadline sets both
// again.
func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.set.Store(0)
	return c.Conn.SetWriteDeadline(t)
}
