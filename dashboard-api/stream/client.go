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

// wsConn is the part of a websocket connection a client uses; the
// benchmark gives a connection that discards.
type wsConn interface {
	SetReadLimit(limit int64)
	SetReadDeadline(t time.Time) error
	SetPongHandler(h func(appData string) error)
	ReadMessage() (messageType int, p []byte, err error)
	WriteControl(messageType int, data []byte, deadline time.Time) error
	// WriteFrames writes complete websocket frames in one write.
	WriteFrames(frames []byte, deadline time.Time) error
	Close() error
}

// gorillaConn writes data frames to the network connection itself, all
// the frames of a drain in one write: gorilla's writer would make a system
// call per message. This is sound because the hub's writer is the only
// goroutine that writes data frames; gorilla's own writes (pongs, close
// answers, our pings) are each one Write of a whole frame, and a net.Conn
// (or tls.Conn) never interleaves two Writes. The upgrader negotiates no
// compression, so frames are plain.
type gorillaConn struct{ *websocket.Conn }

func (g gorillaConn) WriteFrames(frames []byte, deadline time.Time) error {
	nc := g.NetConn()
	if err := nc.SetWriteDeadline(deadline); err != nil {
		return err
	}
	_, err := nc.Write(frames)
	return err
}

// item is one queued entry: a chunk of events (shared with the other
// clients of the group), or a control message (a snapshot to build, an
// error to send) that is never coalesced.
type item struct {
	ch  *chunk
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
// that writes data to conn.
type client struct {
	hub  *Hub
	conn wsConn
	opts ServeOptions
	name string
	log  *slog.Logger

	wake       chan struct{} // cap 1: "the queue changed"
	readerDone chan struct{}
	// Guarded by hub.mu.
	idx  int    // in hub.clients, -1 when not there
	g    *group // its subscription group, nil before the first subscribe
	gidx int    // in g.clients
	// lastSeg is the fan-out segment up to which the client was given its
	// group's events; phase places its turns when staggered.
	lastSeg, phase uint64

	// mu guards the queue; held only for slice operations, never for I/O.
	mu      sync.Mutex
	batch   bool   // batch messages ("batch": true in the subscription)
	q       []item // pending, in seq order
	qEvents int    // events in q's chunks, replays excepted
	// behindSince is when the queue first held more than CoalesceAbove
	// events since the writer last took it; zero when caught up.
	behindSince time.Time
	closing     *closeReason

	wq  []item // the writer's: items being written (swapped with q)
	buf []byte // the writer's reusable frame buffer
}

func newClient(h *Hub, conn wsConn, o ServeOptions) *client {
	name := o.Name
	if name == "" {
		name = "anonymous"
	}
	return &client{hub: h, conn: conn, opts: o, name: name, log: h.log.With("client", name),
		wake: make(chan struct{}, 1), readerDone: make(chan struct{}), idx: -1, gidx: -1}
}

func (c *client) signal() {
	select {
	case c.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// push queues it, coalescing the queued readings once more than
// CoalesceAbove events wait. It returns a drop reason when the client has
// to go. Called with hub.mu held (the fan-out, or a client message).
func (c *client) push(it item, now time.Time) string {
	h := c.hub
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing != nil {
		return ""
	}
	if !c.behindSince.IsZero() && now.Sub(c.behindSince) > h.o.MaxLag {
		return DropLagging
	}
	c.q = append(c.q, it)
	if it.ch != nil && !it.ch.replay {
		c.qEvents += len(it.ch.evs)
	}
	if c.qEvents > h.o.CoalesceAbove {
		// More has piled up than a flush interval brings: the writer is
		// behind, and the lag clock runs until it next takes the queue.
		if c.behindSince.IsZero() {
			c.behindSince = now
		}
		c.coalesceLocked()
	}
	if c.qEvents > h.o.QueueSize || len(c.q) > h.o.QueueSize {
		return DropQueueFull
	}
	c.signal()
	return ""
}

// coalesceLocked merges each run of queued chunks (between control
// messages, replays left alone) into one private chunk in which every
// device has only its newest reading, with the older readings' metrics it
// lacks merged in. Status and alert events always stay, and the queue stays
// in seq order. Called with hub.mu held (its scratch map).
func (c *client) coalesceLocked() {
	h := c.hub
	out := c.q[:0]
	var run []*event
	runLen := 0 // queue items in the current run
	var first item
	total, dropped := 0, 0
	end := func() {
		switch {
		case runLen == 0:
		case runLen == 1:
			out = append(out, first) // a lone chunk is already coalesced, or small
			total += len(first.ch.evs)
		default:
			evs, n := coalesce(run, &h.seen)
			dropped += n
			total += len(evs)
			out = append(out, item{ch: &chunk{evs: evs}})
		}
		run, runLen = run[:0], 0
	}
	for _, it := range c.q {
		if it.ch == nil || it.ch.replay {
			end()
			out = append(out, it)
			continue
		}
		if runLen == 0 {
			first = it
		}
		run = append(run, it.ch.evs...)
		runLen++
	}
	end()
	clear(c.q[len(out):])
	c.q, c.qEvents = out, total
	if dropped > 0 {
		h.m.coalesced.Add(float64(dropped))
	}
}

// subscribe replaces the subscription and everything queued: either a
// snapshot at seq (replay nil) or the replay of a resume. Called with hub.mu
// held, so it sits at an exact point of the sequence.
func (c *client) subscribe(m *matcher, batch bool, seq uint64, replay []*event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing != nil {
		return
	}
	c.batch = batch
	clear(c.q)
	c.q, c.qEvents, c.behindSince = c.q[:0], 0, time.Time{}
	if replay == nil {
		c.q = append(c.q, item{ctl: &control{typ: msgSnapshot, seq: seq, f: m.f}})
	} else if len(replay) > 0 {
		c.q = append(c.q, item{ch: &chunk{evs: replay, replay: true}})
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
	c.q, c.qEvents = nil, 0
	c.signal()
	return true
}

// sendError queues an error message for the client (reader side), through
// the hub's intake, so that it arrives behind the events published before.
func (c *client) sendError(msg string) {
	body, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{msgError, "bad_request", msg})
	c.hub.enqueue(intakeItem{to: c, ctl: &control{typ: msgError, body: body}})
}

// take hands the writer everything queued (in c.wq), or the close to send.
func (c *client) take() ([]item, bool, *closeReason) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing != nil {
		return nil, false, c.closing
	}
	if len(c.q) == 0 {
		return nil, false, nil
	}
	items := c.q
	c.q = c.wq[:0]
	c.wq = items
	c.qEvents, c.behindSince = 0, time.Time{} // caught up
	return items, c.batch, nil
}

// clientMsg is a message from the client: subscribe or resume.
type clientMsg struct {
	Type  string  `json:"type"`
	After *uint64 `json:"after,omitempty"`
	// Batch asks for batch messages: everything queued for the client
	// since its last write in one {"type":"batch"} message.
	Batch bool `json:"batch,omitempty"`
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
		c.hub.subscribe(c, compile(msg.Filter), msg.Batch)
	case "resume":
		if msg.After == nil {
			c.sendError(`resume needs "after", the last seq received`)
			return
		}
		c.hub.resume(c, compile(msg.Filter), msg.Batch, *msg.After)
	default:
		c.sendError(`type must be "subscribe" or "resume"`)
	}
}

// writeLoop sends queued messages and pings until the client closes or is
// closed. Each round writes everything queued since the previous one in a
// single write; the fan-out's FlushInterval paces the rounds.
func (c *client) writeLoop() {
	h := c.hub
	ping := time.NewTicker(h.o.PongWait * 9 / 10)
	defer ping.Stop()
	for {
		// A client busy receiving must still be pinged, or its read
		// deadline here would expire.
		select {
		case <-ping.C:
			if !c.tick() {
				return
			}
		default:
		}
		items, batch, cr := c.take()
		if cr != nil {
			c.sendClose(cr)
			return
		}
		if len(items) > 0 {
			err := c.write(items, batch)
			clear(items)
			if err != nil {
				c.failed(err)
				return
			}
			continue
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
		return true // take now returns the close
	}
	if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.hub.o.WriteWait)); err != nil {
		c.failed(err)
		return false
	}
	return true
}

// maxKeptBuf is the largest frame buffer a writer keeps between writes; a
// bigger one (a snapshot, a long replay) is let go.
const maxKeptBuf = 1 << 20

// write sends items in one write: each event as its own message, or, for
// a batch client, each run of events as one batch message. A lone shared
// chunk is written from the frames its group built once.
func (c *client) write(items []item, batch bool) error {
	h := c.hub
	var (
		counts [kindAlert + 1]int
		ctls   []string // types of the control messages written
		data   []byte
	)
	if len(items) == 1 && items[0].ch != nil {
		data = items[0].ch.bytes(batch)
		count(&counts, items[0].ch.evs)
	} else {
		b := c.buf[:0]
		var run []*event
		flushRun := func() {
			if batch {
				b = appendBatchFrame(b, run)
			} else {
				b = appendEventFrames(b, run)
			}
			count(&counts, run)
			run = run[:0]
		}
		for _, it := range items {
			if it.ch != nil {
				run = append(run, it.ch.evs...)
				continue
			}
			flushRun()
			body := it.ctl.body
			if it.ctl.typ == msgSnapshot {
				var err error
				body, err = json.Marshal(struct {
					Type    string    `json:"type"`
					Seq     uint64    `json:"seq"`
					Time    time.Time `json:"ts"`
					Devices any       `json:"devices"`
				}{msgSnapshot, it.ctl.seq, h.o.Now().UTC(), c.opts.Snapshot(it.ctl.f)})
				if err != nil {
					return errors.Join(errors.New("marshal snapshot"), err)
				}
			}
			b = appendFrame(b, body)
			ctls = append(ctls, it.ctl.typ)
		}
		flushRun()
		data = b
		if cap(b) <= maxKeptBuf {
			c.buf = b[:0]
		} else {
			c.buf = nil
		}
	}
	if len(data) == 0 {
		return nil
	}
	if err := c.conn.WriteFrames(data, time.Now().Add(h.o.WriteWait)); err != nil {
		return err
	}
	h.m.writes.Inc()
	for _, t := range ctls {
		h.m.sentBy[t].Inc()
	}
	for k, n := range counts {
		if n > 0 {
			h.m.sentKind[k].Add(float64(n))
		}
	}
	return nil
}

func count(counts *[kindAlert + 1]int, evs []*event) {
	for _, e := range evs {
		counts[e.kind]++
	}
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
// own, which has ended when Serve returns. It closes conn. The connection
// must not have negotiated compression (the hub writes plain frames).
func (h *Hub) Serve(conn *websocket.Conn, o ServeOptions) {
	h.serve(gorillaConn{conn}, o)
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
