package stream

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Server-only message types.
const (
	msgSnapshot = "snapshot"
	msgError    = "error"
)

// closeReason is the close frame a client gets before it is disconnected.
type closeReason struct {
	code int
	text string
}

var (
	closeTooSlow   = &closeReason{CloseTooSlow, "too slow"}
	closeGoingAway = &closeReason{websocket.CloseGoingAway, "server shutting down"}
	closeRevoked   = &closeReason{websocket.ClosePolicyViolation, "token no longer valid"}
	closeNone      = &closeReason{} // the connection is over: stop without a close frame
)

// SnapshotFunc returns the devices of a snapshot for f, as GET /api/v1/state
// renders them (any JSON-marshalable value).
type SnapshotFunc func(f Filter) any

// ServeOptions are what the HTTP layer knows of one connection.
type ServeOptions struct {
	// Snapshot builds the snapshot's devices; required.
	Snapshot SnapshotFunc
	// Authorized, when set, is asked every ping period whether the
	// connection's token is still valid; false closes it with 1008.
	Authorized func() bool
	// Name identifies the client in logs (the token's name, never the
	// token).
	Name string
}

// wsConn is the part of *websocket.Conn a client uses; the benchmark gives a
// connection that discards.
type wsConn interface {
	SetReadLimit(limit int64)
	SetReadDeadline(t time.Time) error
	SetPongHandler(h func(appData string) error)
	ReadMessage() (messageType int, p []byte, err error)
	SetWriteDeadline(t time.Time) error
	WriteMessage(messageType int, data []byte) error
	WriteControl(messageType int, data []byte, deadline time.Time) error
	Close() error
}

// item is one queued message: an event, or a control message (a snapshot
// to build, an error to send) that is never coalesced.
type item struct {
	ev  *event
	ctl *control
}

type control struct {
	typ  string // msgSnapshot or msgError
	seq  uint64 // snapshot: the seq it reflects
	f    Filter // snapshot: its filter
	body []byte // error: the message
}

// client is one websocket connection. The reader goroutine (the one that
// called Serve) reads client messages; the writer goroutine is the only one
// that writes to conn.
type client struct {
	hub  *Hub
	conn wsConn
	opts ServeOptions
	name string
	log  *slog.Logger

	wake       chan struct{} // cap 1: "the queue changed"
	readerDone chan struct{}
	idx        int // in hub.clients; guarded by hub.mu, -1 when not there

	// mu guards the queue; held only for slice operations, never for I/O.
	mu          sync.Mutex
	m           *matcher // nil until the first subscribe: receives nothing
	replay      []*event // a resume's backlog, sent before q
	q           []item   // q[head:] are pending
	head        int
	behindSince time.Time // when it first coalesced; zero when caught up
	closing     *closeReason
	seen        map[string]int // scratch of coalesce
}

func newClient(h *Hub, conn wsConn, o ServeOptions) *client {
	name := o.Name
	if name == "" {
		name = "anonymous"
	}
	return &client{hub: h, conn: conn, opts: o, name: name, log: h.log.With("client", name),
		wake: make(chan struct{}, 1), readerDone: make(chan struct{}), idx: -1}
}

func (c *client) signal() {
	select {
	case c.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

func (c *client) pending() int { return len(c.q) - c.head }

// offer queues e if it matches the subscription. It returns a drop reason
// when the client has to go. Called with hub.mu held.
func (c *client) offer(e *event, now time.Time) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing != nil || c.m == nil || !c.m.match(e) {
		return ""
	}
	return c.pushLocked(item{ev: e}, now)
}

// pushLocked appends it, coalescing queued readings when the queue is full.
func (c *client) pushLocked(it item, now time.Time) string {
	h := c.hub
	if !c.behindSince.IsZero() && now.Sub(c.behindSince) > h.o.MaxLag {
		return DropLagging
	}
	if c.pending() >= h.o.QueueSize {
		it = c.coalesceLocked(it)
		if c.pending() >= h.o.QueueSize {
			return DropQueueFull
		}
		if c.behindSince.IsZero() {
			c.behindSince = now
		}
	}
	if c.head > 0 && len(c.q) == cap(c.q) {
		// Reuse the sent prefix instead of letting append grow the array.
		n := copy(c.q, c.q[c.head:])
		clear(c.q[n:])
		c.q = c.q[:n]
		c.head = 0
	}
	c.q = append(c.q, it)
	c.signal()
	return ""
}

// coalesceLocked drops every queued reading that a newer reading of the same
// device (queued, or the incoming one) supersedes, merging metrics the newer
// one lacks into it. Status, alert and control messages always stay, and the
// queue stays in seq order. It returns the incoming item, possibly merged.
func (c *client) coalesceLocked(in item) item {
	if c.seen == nil {
		c.seen = map[string]int{}
	}
	clear(c.seen)
	const incoming = -1
	if in.ev != nil && in.ev.kind == kindReading {
		c.seen[in.ev.deviceID] = incoming
	}
	dropped := 0
	for i := len(c.q) - 1; i >= c.head; i-- {
		e := c.q[i].ev
		if e == nil || e.kind != kindReading {
			continue
		}
		j, ok := c.seen[e.deviceID]
		if !ok {
			c.seen[e.deviceID] = i
			continue
		}
		if j == incoming {
			in.ev = in.ev.merged(e)
		} else {
			c.q[j].ev = c.q[j].ev.merged(e)
		}
		c.q[i] = item{}
		dropped++
	}
	if dropped == 0 {
		return in
	}
	n := 0
	for i := c.head; i < len(c.q); i++ {
		if c.q[i].ev != nil || c.q[i].ctl != nil {
			c.q[n] = c.q[i]
			n++
		}
	}
	clear(c.q[n:])
	c.q, c.head = c.q[:n], 0
	c.hub.m.coalesced.Add(float64(dropped))
	return in
}

// subscribe replaces the subscription and everything queued: either a
// snapshot at seq (replay nil) or the replay of a resume. Called with hub.mu
// held, so it sits at an exact point of the sequence.
func (c *client) subscribe(m *matcher, seq uint64, replay []*event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing != nil {
		return
	}
	c.m = m
	clear(c.q)
	c.q, c.head, c.behindSince = c.q[:0], 0, time.Time{}
	c.replay = replay
	if replay == nil {
		c.q = append(c.q, item{ctl: &control{typ: msgSnapshot, seq: seq, f: m.f}})
	}
	c.signal()
}

// close makes the writer send cr and stop; it reports false if the client
// was already closing.
func (c *client) close(cr *closeReason) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing != nil {
		return false
	}
	c.closing = cr
	clear(c.q)
	c.q, c.head, c.replay = nil, 0, nil
	c.signal()
	return true
}

// sendError queues an error message for the client (reader side).
func (c *client) sendError(msg string) {
	body, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{msgError, "bad_request", msg})
	c.hub.mu.Lock() // pushLocked may drop the client, which needs the hub
	defer c.hub.mu.Unlock()
	c.mu.Lock()
	reason := ""
	if c.closing == nil {
		reason = c.pushLocked(item{ctl: &control{typ: msgError, body: body}}, c.hub.o.Now())
	}
	c.mu.Unlock()
	if reason != "" {
		c.hub.dropLocked(c, reason)
	}
}

// next pops the next message, or the close to send.
func (c *client) next() (item, *closeReason, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing != nil {
		return item{}, c.closing, false
	}
	if len(c.replay) > 0 {
		e := c.replay[0]
		c.replay[0] = nil
		c.replay = c.replay[1:]
		return item{ev: e}, nil, true
	}
	if c.head == len(c.q) {
		return item{}, nil, false
	}
	it := c.q[c.head]
	c.q[c.head] = item{}
	c.head++
	if c.head == len(c.q) {
		c.q, c.head = c.q[:0], 0
		c.behindSince = time.Time{} // caught up
	}
	return it, nil, true
}

// clientMsg is a message from the client: subscribe or resume.
type clientMsg struct {
	Type  string  `json:"type"`
	After *uint64 `json:"after,omitempty"`
	Filter
}

// readLoop reads client messages until the connection fails or closes.
func (c *client) readLoop() {
	h := c.hub
	c.conn.SetReadLimit(h.o.MaxMessageBytes)
	_ = c.conn.SetReadDeadline(time.Now().Add(h.o.PongWait))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(h.o.PongWait))
	})
	for {
		typ, data, err := c.conn.ReadMessage()
		if err != nil {
			if websocket.IsUnexpectedCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway,
				websocket.CloseNoStatusReceived, websocket.CloseAbnormalClosure) {
				c.log.Debug("stream read", "err", err)
			}
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(h.o.PongWait))
		if typ != websocket.TextMessage {
			c.sendError("messages are JSON text")
			continue
		}
		c.handle(data)
	}
}

func (c *client) handle(data []byte) {
	var msg clientMsg
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields() // a misspelt filter field must not silently mean "all"
	if err := dec.Decode(&msg); err != nil {
		c.sendError("malformed message: " + err.Error())
		return
	}
	if err := msg.Filter.Validate(); err != nil {
		c.sendError(err.Error())
		return
	}
	switch msg.Type {
	case "subscribe":
		c.hub.subscribe(c, compile(msg.Filter))
	case "resume":
		if msg.After == nil {
			c.sendError(`resume needs "after", the last seq received`)
			return
		}
		c.hub.resume(c, compile(msg.Filter), *msg.After)
	default:
		c.sendError(`type must be "subscribe" or "resume"`)
	}
}

// writeLoop sends queued messages and pings until the client closes or is
// closed.
func (c *client) writeLoop() {
	h := c.hub
	ping := time.NewTicker(h.o.PongWait * 9 / 10)
	defer ping.Stop()
	for {
		// Drain, pinging in between: a client busy receiving must still be
		// pinged, or its read deadline here would expire.
		for {
			select {
			case <-ping.C:
				if !c.tick() {
					return
				}
			default:
			}
			it, cr, ok := c.next()
			if cr != nil {
				c.sendClose(cr)
				return
			}
			if !ok {
				break
			}
			if err := c.write(it); err != nil {
				c.failed(err)
				return
			}
		}
		select {
		case <-c.wake:
		case <-ping.C:
			if !c.tick() {
				return
			}
		case <-c.readerDone:
			return
		}
	}
}

// tick checks the token and pings; false when the writer must stop.
func (c *client) tick() bool {
	if c.opts.Authorized != nil && !c.opts.Authorized() {
		c.hub.drop(c, DropRevoked)
		return true // next() now returns the close
	}
	if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.hub.o.WriteWait)); err != nil {
		c.failed(err)
		return false
	}
	return true
}

func (c *client) write(it item) error {
	h := c.hub
	var (
		data []byte
		typ  string
	)
	switch {
	case it.ev != nil:
		data, typ = it.ev.encoded(), it.ev.kind.String()
	case it.ctl.typ == msgSnapshot:
		var err error
		data, err = json.Marshal(struct {
			Type    string    `json:"type"`
			Seq     uint64    `json:"seq"`
			Time    time.Time `json:"ts"`
			Devices any       `json:"devices"`
		}{msgSnapshot, it.ctl.seq, h.o.Now().UTC(), c.opts.Snapshot(it.ctl.f)})
		if err != nil {
			return errors.Join(errors.New("marshal snapshot"), err)
		}
		typ = msgSnapshot
	default:
		data, typ = it.ctl.body, it.ctl.typ
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(h.o.WriteWait))
	if err := c.conn.WriteMessage(websocket.TextMessage, data); err != nil {
		return err
	}
	h.m.sentBy[typ].Inc()
	return nil
}

// failed handles a write error: unless the reader already ended (the client
// left), the client is dropped; closing conn ends the reader.
func (c *client) failed(err error) {
	select {
	case <-c.readerDone:
	default:
		c.hub.drop(c, DropWriteFailed)
		c.log.Info("stream write failed", "err", err)
	}
	_ = c.conn.Close()
}

// sendClose sends the close frame and waits a little for the client's
// answer, which ends the reader, before cutting the connection.
func (c *client) sendClose(cr *closeReason) {
	if cr == closeNone {
		return
	}
	h := c.hub
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(cr.code, cr.text),
		time.Now().Add(h.o.WriteWait))
	t := time.NewTimer(h.o.CloseGrace)
	defer t.Stop()
	select {
	case <-c.readerDone:
	case <-t.C:
		_ = c.conn.Close()
	}
}

// Serve runs one websocket connection until it ends: it reads the client's
// subscriptions on the calling goroutine and writes on one goroutine of its
// own, which has ended when Serve returns. It closes conn.
func (h *Hub) Serve(conn *websocket.Conn, o ServeOptions) {
	h.serve(conn, o)
}

func (h *Hub) serve(conn wsConn, o ServeOptions) {
	if o.Snapshot == nil {
		o.Snapshot = func(Filter) any { return []any{} }
	}
	c := newClient(h, conn, o)
	if !h.add(c) {
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(closeGoingAway.code, closeGoingAway.text), time.Now().Add(h.o.WriteWait))
		_ = conn.Close()
		return
	}
	defer h.serving.Done()
	h.m.clients.Inc()
	defer h.m.clients.Dec()
	c.log.Debug("stream client connected")

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	c.readLoop()
	close(c.readerDone)
	h.remove(c)
	c.close(closeNone)
	// The reader ended: the client closed (its close was answered), left, or
	// was cut after a close of ours. Closing conn also ends a writer blocked
	// on a peer that stopped reading.
	_ = conn.Close()
	<-writerDone
	c.log.Debug("stream client disconnected")
}
