package broker

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// DeliverFunc hands one message to an in-process consumer (ingest).
//
// ack, when not nil, sends the client's PUBACK; the consumer calls it once
// the message is durable (its readings are in InfluxDB or fsynced in a
// spool), from any goroutine, at most once. When the client has gone
// meanwhile it does nothing: the client sends the message again.
//
// DeliverFunc may block, which stops the broker reading from that client's
// connection (back pressure). It returns false when it did not take the
// message; ack is then never called.
//
// payload belongs to the consumer: the broker does not reuse it.
type DeliverFunc func(topic string, payload []byte, ack func()) bool

// Intercept routes every PUBLISH that a network client sends on a topic
// matching filter (a topic filter with + and #, no $share) to fn, in
// process, instead of to subscribers: nobody else receives those messages.
//
// At QoS 1 the broker does not acknowledge the PUBLISH itself: fn's
// consumer does, through ack, once the message is durable. A PUBACK thus
// means stored, and a crash of the whole process loses nothing a client
// was told was received. Because the PUBACK is sent later rather than
// waited for, a client may keep publishing meanwhile: acknowledgement
// latency costs no per-connection throughput. QoS 0 messages are handed
// over without ack; QoS 2 ones also, and then go on through mochi's
// usual QoS 2 exchange (in memory: no stronger than before).
//
// Intercept must be called before Start, so that no message on the topic
// is acknowledged by anyone else.
func (b *Broker) Intercept(filter string, fn DeliverFunc) error {
	if fn == nil {
		return errors.New("intercept: fn is nil")
	}
	if !mqtt.IsValidFilter(filter, false) || strings.HasPrefix(filter, "$") {
		return fmt.Errorf("intercept: invalid topic filter %q", filter)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.closed {
		return errors.New("intercept: broker already started")
	}
	if b.intercept == nil {
		b.intercept = &interceptHook{acks: newAcker(b.server.Info)}
		go b.intercept.acks.run()
		if err := b.server.AddHook(b.intercept, nil); err != nil {
			return fmt.Errorf("intercept: add hook: %w", err)
		}
	}
	b.intercept.add(strings.Split(filter, "/"), fn)
	return nil
}

// Subscribe delivers every message published on topics matching filter
// (including last wills and, at once, retained messages) to fn, in process,
// through mochi's inline client. It has no acknowledgement to give: ack is
// always nil, and when fn returns false the message is simply not taken.
func (b *Broker) Subscribe(filter string, id int, fn DeliverFunc) error {
	if fn == nil {
		return errors.New("subscribe: fn is nil")
	}
	err := b.server.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(pk.TopicName, pk.Payload, nil)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s in process: %w", filter, err)
	}
	return nil
}

// interceptHook implements Intercept in mochi's OnPublish, which runs on
// the publishing client's goroutine after the ACL check and before mochi
// would send the PUBACK and deliver to subscribers.
type interceptHook struct {
	mqtt.HookBase
	// routes is replaced whole by add (before Start) and only read after.
	routes atomic.Pointer[[]route]
	acks   *acker
}

type route struct {
	levels []string
	fn     DeliverFunc
}

func (h *interceptHook) add(levels []string, fn DeliverFunc) {
	var rs []route
	if p := h.routes.Load(); p != nil {
		rs = append(rs, *p...)
	}
	rs = append(rs, route{levels: levels, fn: fn})
	h.routes.Store(&rs)
}

// ID names the hook in mochi's logs.
func (h *interceptHook) ID() string { return "infrawatch-intercept" }

// Provides lists the hook methods mochi should call (asked on every
// event: see authHook.Provides).
func (h *interceptHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish hands a matching PUBLISH to its route, and returns it as a
// QoS 0 packet marked Ignore: mochi then sends no PUBACK (the route's ack
// does, later), delivers it to nobody and retains nothing. Returning
// ErrRejectPacket would do the same, but mochi logs every rejection at
// debug level with the packet boxed in an interface: about 400 bytes
// allocated per message, 40% of the process's allocation under load.
func (h *interceptHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	fn := h.match(pk.TopicName)
	if fn == nil {
		return pk, nil
	}
	switch pk.FixedHeader.Qos {
	case 0:
		fn(pk.TopicName, pk.Payload, nil)
		return consumed(pk), nil
	case 1:
		id := pk.PacketID
		fn(pk.TopicName, pk.Payload, func() { h.acks.ack(cl, id) })
		return consumed(pk), nil
	default:
		fn(pk.TopicName, pk.Payload, nil)
		return pk, nil
	}
}

// consumed turns pk into one mochi has nothing left to do for (see
// OnPublish).
func consumed(pk packets.Packet) packets.Packet {
	pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Ignore = 0, false, true
	return pk
}

func (h *interceptHook) match(topic string) DeliverFunc {
	p := h.routes.Load()
	if p == nil {
		return nil
	}
	for _, r := range *p {
		if matchTopic(r.levels, topic) {
			return r.fn
		}
	}
	return nil
}

// matchTopic reports whether topic matches the filter split into levels.
// Topics starting with '$' match no wildcard at the first level
// ([MQTT-4.7.2-1]).
func matchTopic(levels []string, topic string) bool {
	if strings.HasPrefix(topic, "$") && len(levels) > 0 && (levels[0] == "+" || levels[0] == "#") {
		return false
	}
	for i, l := range levels {
		if l == "#" {
			return true
		}
		var level string
		var more bool
		level, topic, more = strings.Cut(topic, "/")
		if l != "+" && l != level {
			return false
		}
		if !more {
			// The topic ended: it matches when the filter does too, or
			// continues only with "#" (which matches the parent level).
			rest := levels[i+1:]
			return len(rest) == 0 || (len(rest) == 1 && rest[0] == "#")
		}
	}
	return false
}

// ackWriteTimeout bounds one write of PUBACKs to a client. A client that
// does not read them for this long (its socket buffer is full) is
// disconnected rather than allowed to hold up everyone's PUBACKs; it sends
// the unacknowledged messages again when it reconnects.
const ackWriteTimeout = 2 * time.Second

// ackGather is how long the acker lets acknowledgements gather before it
// writes them (see acker.run).
const ackGather = time.Millisecond

// acker sends the PUBACKs of intercepted messages. ack is called by the
// consumer once per durable message (for a batch, many in a row); the
// acker's goroutine writes each client's pending PUBACKs with one write,
// so a batch of acknowledgements costs a system call per client, not per
// message, and a slow client never blocks the consumer.
type acker struct {
	info *system.Info

	mu      sync.Mutex
	pending map[*mqtt.Client][]byte
	order   []*mqtt.Client // clients with pending PUBACKs, first come first
	spare   map[*mqtt.Client][]byte
	closed  bool

	writes atomic.Int64 // for tests: writes to clients

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newAcker(info *system.Info) *acker {
	return &acker{
		info:    info,
		pending: make(map[*mqtt.Client][]byte),
		spare:   make(map[*mqtt.Client][]byte),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// ack queues the PUBACK of packet id for cl. A PUBACK without reason code
// or properties is the same 4 bytes in MQTT 3.1.1 and 5 (a v5 reason code
// of success may be left out).
func (a *acker) ack(cl *mqtt.Client, id uint16) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return // the broker is closing: the client sends it again
	}
	buf, ok := a.pending[cl]
	if !ok {
		a.order = append(a.order, cl)
	}
	a.pending[cl] = append(buf, packets.Puback<<4, 2, byte(id>>8), byte(id))
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// run writes pending PUBACKs until close, then what is left.
func (a *acker) run() {
	defer close(a.done)
	var order []*mqtt.Client
	for {
		select {
		case <-a.wake:
			// The consumer acknowledges a stored batch one message at a
			// time; waking on the first, the acker would write a client's
			// PUBACKs in several pieces while the rest come in. A short
			// pause lets the batch's acknowledgements gather: one write
			// per client per batch (a write costs several microseconds),
			// for at most ackGather more on a PUBACK that waited for a
			// write to InfluxDB anyway.
			time.Sleep(ackGather)
		case <-a.stop:
			a.mu.Lock()
			a.closed = true
			a.mu.Unlock()
			a.flush(order)
			return
		}
		order = a.flush(order)
	}
}

// flush swaps the pending PUBACKs out and writes them; order is a slice
// to reuse.
func (a *acker) flush(order []*mqtt.Client) []*mqtt.Client {
	a.mu.Lock()
	pending := a.pending
	a.pending, a.spare = a.spare, nil
	order, a.order = a.order, order[:0]
	a.mu.Unlock()
	for _, cl := range order {
		a.write(cl, pending[cl])
	}
	clear(pending)
	clear(order)
	a.mu.Lock()
	a.spare = pending
	a.mu.Unlock()
	return order[:0]
}

func (a *acker) write(cl *mqtt.Client, buf []byte) {
	if len(buf) == 0 || cl.Closed() || cl.Net.Conn == nil {
		return
	}
	// Under the client's lock, as mochi's own writes are, so PUBACKs
	// never land inside another packet.
	cl.Lock()
	_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(ackWriteTimeout))
	n, err := cl.Net.Conn.Write(buf)
	a.writes.Add(1)
	_ = cl.Net.Conn.SetWriteDeadline(time.Time{})
	cl.Unlock()
	atomic.AddInt64(&a.info.BytesSent, int64(n))
	atomic.AddInt64(&a.info.PacketsSent, int64(n/4))
	if err != nil {
		cl.Stop(fmt.Errorf("write PUBACKs: %w", err))
	}
}

// close writes what is pending and stops the goroutine. Later acks are
// dropped (the clients are being disconnected).
func (a *acker) close() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}
