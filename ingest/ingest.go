package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

// Topics ingest subscribes to (QoS 1). The telemetry ones are prefixed
// with $share/<group>/ when Options.SharedGroup is set.
const (
	TopicDeviceTelemetry  = "devices/+/telemetry"
	TopicDeviceStatus     = "devices/+/status"
	TopicGatewayTelemetry = "gateways/+/telemetry"
)

// Ingester subscribes to device telemetry, validates it, hands accepted
// readings to the consumers, and writes them to InfluxDB in batches,
// acknowledging each MQTT message only once its readings are stored.
//
// The path of a message: the MQTT client's handler puts it in the inbox of
// the worker its device (or gateway) is assigned to; when the inboxes are
// full the handler waits, and since the client calls it in order
// (SetOrderMatters(true)) it stops reading from the broker: back pressure
// reaches the broker, which holds the messages. A worker decodes and
// checks the message, dead-letters what it rejects, calls the consumers
// with the rest, encodes it as line protocol and passes it to the writer.
// The writer batches, writes with retries, and then acknowledges.
//
// In process (Options.Local) the embedded broker calls Deliver on the
// publishing device's connection goroutine instead: the same inboxes, the
// same back pressure (a full inbox stops the broker reading from that
// device), and the acknowledgement is the device's PUBACK itself.
type Ingester struct {
	o      Options
	log    *slog.Logger
	m      *metrics
	client mqtt.Client
	lim    *limiter
	dead   *deadStore
	spool  *spool // nil without Options.SpoolDir

	inbox    []chan inboxItem // one per worker
	chunks   chan *chunk      // workers → writer
	dlq      chan deadLetter
	stopping chan struct{} // closed when Run's context ends
	pool     sync.Pool     // *chunk
	// localWorkers are the workers (decoder and buffers) of Deliver's
	// callers; delivering is read-held by each Deliver in progress.
	localWorkers sync.Pool // *worker
	delivering   sync.RWMutex

	runCtx    atomic.Pointer[context.Context]
	started   atomic.Bool
	connected atomic.Bool
	// conn is the current connection to an external broker: the one
	// messages handed to onMessage arrived on (see inboxItem).
	conn atomic.Pointer[brokerConn]
	// sent is the MQTT client's keepalive clock of what was sent.
	sent interface{ UpdateLastSent() }
	// sessionPresent is the last CONNACK's session-present flag;
	// connections counts successful connections (see checkSession).
	sessionPresent atomic.Bool
	connections    atomic.Int64
	msgSeq         atomic.Uint64
	// influxDown is set when a write failed and batches go straight to
	// the spool; the replayer clears it when a write succeeds again.
	influxDown atomic.Bool
}

// inboxItem is a message for a worker. conn and mid, set for a QoS 1
// message from an external broker, are how it is acknowledged (see
// chunk.ack).
type inboxItem struct {
	m    mqtt.Message
	conn *brokerConn
	mid  uint16
}

// chunk is the encoded readings of one message, waiting to be written.
type chunk struct {
	msg mqtt.Message
	// conn and mid acknowledge msg when conn is set; acked keeps that to
	// one PUBACK, as paho's Ack is once only.
	conn  *brokerConn
	mid   uint16
	acked bool
	// local is msg for a message from Deliver: held in the pooled chunk,
	// it costs no allocation per message.
	local  localMessage
	lines  []byte
	points int
	times  []int64 // UnixNano of each point, for the lag histogram
	// for dead-lettering the message if InfluxDB refuses its batch
	deviceID, gatewayID string
	received            time.Time
}

// New checks the options, fills in defaults and prepares an Ingester. It
// opens the spool (Options.SpoolDir), recovering what an earlier process
// left there; Run connects.
func New(o Options) (*Ingester, error) {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	in := &Ingester{
		o:        o,
		log:      o.Logger.With("component", "ingest"),
		lim:      newLimiter(o.DeviceRateLimit, o.DeviceBurst, o.MaxAge),
		dead:     newDeadStore(o.DeadLetterStoreSize, o.DeadLetterStoreBytes),
		inbox:    make([]chan inboxItem, o.Workers),
		chunks:   make(chan *chunk, max(o.QueueSize/2, 1)),
		dlq:      make(chan deadLetter, o.DeadLetterQueue),
		stopping: make(chan struct{}),
	}
	per := max(o.QueueSize/2/o.Workers, 1)
	for i := range in.inbox {
		in.inbox[i] = make(chan inboxItem, per)
	}
	in.pool.New = func() any { return new(chunk) }
	in.localWorkers.New = func() any { return in.newWorker() }
	m, err := newMetrics(o.Registerer, func() float64 { return float64(in.queueLen()) },
		func() float64 { return float64(in.dead.len()) })
	if err != nil {
		return nil, fmt.Errorf("ingest: register metrics: %w", err)
	}
	in.m = m
	if o.SpoolDir != "" {
		if in.spool, err = openSpool(o.SpoolDir, o.SpoolMaxBytes); err != nil {
			return nil, fmt.Errorf("ingest: open spool: %w", err)
		}
		_, msgs, pts := in.spool.stats()
		if msgs > 0 {
			in.log.Info("spool holds batches from an earlier run; replaying them", "dir", o.SpoolDir, "messages", msgs, "points", pts)
		}
		if in.spool.discardedMsgs > 0 {
			in.log.Error("spool: damaged records discarded", "dir", o.SpoolDir, "messages", in.spool.discardedMsgs, "points", in.spool.discardedPts)
			m.msgDropped.WithLabelValues(ReasonSpoolCorrupt).Add(float64(in.spool.discardedMsgs))
			m.msgRecovered.Add(float64(in.spool.discardedMsgs))
		}
		m.msgRecovered.Add(float64(msgs))
		m.msgSpooled.Set(float64(msgs))
		in.spoolGauges()
	}

	if o.Local != nil {
		return in, nil // in process: no MQTT client
	}
	po := mqtt.NewClientOptions().
		AddBroker(o.BrokerURL).
		SetClientID(o.ClientID).
		SetUsername(o.Username).
		SetPassword(o.Password).
		// A persistent session: the broker keeps the subscriptions and
		// queues QoS 1 messages while ingest is away.
		SetCleanSession(false).
		// Not ResumeSubs: the session keeps the subscriptions, and
		// OnConnect subscribes on every connection. With it, paho stores
		// OnConnect's SUBSCRIBE, and its resume, which runs alongside
		// OnConnect, sends it again under the same message id, completing
		// OnConnect's token at once, without a SUBACK: ingest reported
		// itself subscribed before the broker had the subscription, and
		// what devices published meanwhile went to nobody
		// (TestSubscribeWaitsForSUBACK).
		SetResumeSubs(false).
		SetStore(newOutboundStore()).
		// Acknowledge only after the readings are stored (chunk.ack in
		// the writer), never when the handler returns.
		SetAutoAckDisabled(true).
		// The handler is called in order on the client's goroutine and
		// only queues the message; when the queue is full it waits, which
		// stops the client reading from the network. With OrderMatters
		// false the client would start a goroutine per message and keep
		// reading however far behind the writer is (unbounded for QoS 0),
		// and one device's messages could reach the consumers out of order;
		// and the handler could run after paho dialed the next connection,
		// which onMessage relies on it not doing (the connection a PUBACK
		// goes to).
		SetOrderMatters(true).
		SetKeepAlive(o.KeepAlive).
		// paho waits 10 s for a PINGRESP by default whatever the keepalive;
		// a frozen broker should be given up within about two keepalives.
		SetPingTimeout(min(o.KeepAlive, 10*time.Second)).
		SetConnectTimeout(o.ConnectTimeout).
		SetWriteTimeout(o.ConnectTimeout).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(10 * time.Second).
		// Subscriptions without their own callback: with a persistent
		// session the broker may send queued messages before OnConnect has
		// subscribed again, and they must be handled too.
		SetDefaultPublishHandler(in.onMessage).
		SetOnConnectHandler(in.onConnect).
		SetConnectionLostHandler(in.onConnectionLost).
		SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) { in.m.reconnects.Inc() })
	if o.TLSConfig != nil {
		po.SetTLSConfig(o.TLSConfig)
	}
	// Validate accepted only schemes the dialer handles.
	po.SetCustomOpenConnectionFn(sessionDialer{onSession: in.sessionPresent.Store, onConn: in.conn.Store,
		onSent: func() { in.sent.UpdateLastSent() }}.open)
	in.client = mqtt.NewClient(po)
	// The exported method of paho's unexported client type, the one way
	// to tell its keepalive of the PUBACKs ingest writes (brokerConn.onSent).
	var ok bool
	if in.sent, ok = in.client.(interface{ UpdateLastSent() }); !ok {
		return nil, fmt.Errorf("ingest: paho's client (%T) has no UpdateLastSent", in.client)
	}
	return in, nil
}

// Connected reports whether the ingester is connected to the broker and
// subscribed, for readiness checks.
func (in *Ingester) Connected() bool { return in.connected.Load() }

func (in *Ingester) setConnected(v bool) {
	in.connected.Store(v)
	if v {
		in.m.connected.Set(1)
	} else {
		in.m.connected.Set(0)
	}
}

func (in *Ingester) queueLen() int {
	n := len(in.chunks)
	for _, c := range in.inbox {
		n += len(c)
	}
	return n
}

// Run connects to the broker (retrying, and reconnecting whenever the
// connection drops), subscribes, and processes messages until ctx ends.
// Then it stops taking messages, writes what it has already decoded
// (within ShutdownTimeout), acknowledges what was written, and disconnects.
// Messages not acknowledged then are delivered again by the broker on the
// next connection with the same ClientID. Run may be called once.
func (in *Ingester) Run(ctx context.Context) error {
	if !in.started.CompareAndSwap(false, true) {
		return errors.New("ingest: Run called twice")
	}
	in.runCtx.Store(&ctx)

	var workers sync.WaitGroup
	for i := range in.inbox {
		workers.Go(func() { in.work(ctx, i) })
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		in.writeLoop(ctx)
	}()
	replayCtx, stopReplay := context.WithCancel(ctx)
	replayDone := make(chan struct{})
	go func() {
		defer close(replayDone)
		if in.spool != nil {
			in.replayLoop(replayCtx)
		}
	}()
	dlStop, dlDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(dlDone)
		in.publishDeadLetters(dlStop)
	}()

	var runErr error
	if in.client == nil {
		// In process: the broker calls Deliver.
		in.setConnected(true)
		in.log.Info("ingest attached to the embedded broker in process")
		<-ctx.Done()
	} else {
		in.log.Info("connecting to MQTT broker", "broker", in.o.BrokerURL, "client_id", in.o.ClientID)
		tok := in.client.Connect()
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				runErr = fmt.Errorf("ingest: connect to %s: %w", in.o.BrokerURL, err)
			}
		case <-ctx.Done():
		}
		if runErr == nil {
			<-ctx.Done()
		}
	}

	// Shutdown, in the order data flows: stop taking messages, let the
	// writer write what the workers handed over, publish pending dead
	// letters, then disconnect (the acks are sent before DISCONNECT).
	close(in.stopping)
	workers.Wait()
	in.delivering.Lock() // no Deliver or replay in progress, none to come
	in.requeueReplays()
	close(in.chunks)
	in.delivering.Unlock()
	<-writerDone
	stopReplay()
	<-replayDone
	if in.spool != nil {
		if err := in.spool.close(); err != nil {
			in.log.Warn("close spool", "err", err)
		}
	}
	close(dlStop)
	<-dlDone
	if in.client != nil {
		in.client.Disconnect(500)
	}
	in.setConnected(false)
	in.log.Info("ingest stopped")
	return runErr
}

// onMessage is the MQTT client's handler for every message.
func (in *Ingester) onMessage(_ mqtt.Client, m mqtt.Message) {
	_, id := parseTopic(m.Topic())
	it := inboxItem{m: m}
	if m.Qos() == 1 {
		// paho calls this handler on the connection's own dispatcher
		// (SetOrderMatters(true)), which it stops before dialing the next
		// connection (internalConnLost waits for it before reconnect): in.conn
		// is the connection m arrived on.
		it.conn, it.mid = in.conn.Load(), m.MessageID()
	}
	select {
	case in.inbox[shard(id, len(in.inbox))] <- it:
	case <-in.stopping:
		// Not acknowledged: the broker delivers it again next session.
	}
}

// Deliver takes one message from the in-process broker (Options.Local).
// ack, when not nil, is called once the message is settled: its readings
// are stored or fsynced in the spool, or it was rejected (dead-lettered)
// or dropped for good. The broker sends the QoS 1 PUBACK then, so a PUBACK
// means durable. Messages of one topic must be delivered in order (the
// broker calls Deliver on the publishing client's goroutine); they reach
// the consumers in that order.
//
// Deliver blocks while ingest's queue is full, which stops the broker
// reading from that client (back pressure). It returns false, without
// taking the message, once Run is ending; ack is then never called and the
// client sends the message again after it reconnects. payload must not be
// modified afterwards.
//
// The message is decoded and handed to the consumers on the caller's
// goroutine, not a worker's: the broker calls Deliver on the publishing
// client's goroutine, which keeps one device's messages in order, and
// doing the work there saves two goroutine switches per message.
func (in *Ingester) Deliver(topic string, payload []byte, ack func()) bool {
	// Run waits for the Delivers in progress (write lock) before it
	// closes the chunks channel they send to.
	in.delivering.RLock()
	defer in.delivering.RUnlock()
	select {
	case <-in.stopping:
		return false
	default:
	}
	ctx := context.Background()
	if p := in.runCtx.Load(); p != nil {
		ctx = *p
	}
	w := in.localWorkers.Get().(*worker)
	c := in.getChunk()
	c.local.topic, c.local.payload, c.local.ack = topic, payload, ack
	c.msg = &c.local
	if !w.process(ctx, c) {
		in.putChunk(c)
	}
	in.localWorkers.Put(w)
	return true
}

// localMessage is a message from the in-process broker.
type localMessage struct {
	topic   string
	payload []byte
	ack     func()
	acked   atomic.Bool
}

func (m *localMessage) Duplicate() bool   { return false }
func (m *localMessage) Qos() byte         { return 1 }
func (m *localMessage) Retained() bool    { return false }
func (m *localMessage) Topic() string     { return m.topic }
func (m *localMessage) MessageID() uint16 { return 0 }
func (m *localMessage) Payload() []byte   { return m.payload }

// Ack sends the PUBACK, once.
func (m *localMessage) Ack() {
	if m.ack != nil && m.acked.CompareAndSwap(false, true) {
		m.ack()
	}
}

func (in *Ingester) onConnect(c mqtt.Client) {
	in.checkSession()
	ctx := context.Background()
	if p := in.runCtx.Load(); p != nil {
		ctx = *p
	}
	filters := in.subscriptions()
	for attempt := 0; ; attempt++ {
		err := subscribe(ctx, c, filters, in.o.ConnectTimeout)
		if err == nil {
			in.setConnected(true)
			in.log.Info("subscribed", "broker", in.o.BrokerURL, "topics", len(filters))
			return
		}
		in.log.Error("subscribe failed", "broker", in.o.BrokerURL, "attempt", attempt, "err", err)
		if !c.IsConnectionOpen() {
			return // the next OnConnect tries again
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(store.Backoff(attempt)):
		}
	}
}

func subscribe(ctx context.Context, c mqtt.Client, filters map[string]byte, timeout time.Duration) error {
	tok := c.SubscribeMultiple(filters, nil)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
	case <-t.C:
		return errors.New("subscribe: no answer from the broker")
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		// A token completed without its SUBACK has no result: not
		// subscribed (see SetResumeSubs in New).
		res := st.Result()
		for topic := range filters {
			code, ok := res[topic]
			if !ok {
				return fmt.Errorf("subscribe to %s: no SUBACK", topic)
			}
			if code >= 0x80 {
				return fmt.Errorf("subscribe to %s: refused by the broker (code %#x)", topic, code)
			}
		}
	}
	return nil
}

// subscriptions returns the topic filters, all at QoS 1.
func (in *Ingester) subscriptions() map[string]byte {
	share := func(t string) string {
		if in.o.SharedGroup == "" {
			return t
		}
		return "$share/" + in.o.SharedGroup + "/" + t
	}
	return map[string]byte{
		share(TopicDeviceTelemetry):  1,
		share(TopicGatewayTelemetry): 1,
		TopicDeviceStatus:            1,
	}
}

// checkSession warns when the broker did not keep ingest's session across
// a reconnect: what devices published since the broker lost it and before
// the new subscription was not queued for ingest (see session.go).
func (in *Ingester) checkSession() {
	first := in.connections.Add(1) == 1
	present := in.sessionPresent.Load()
	switch {
	case present:
		in.log.Info("broker kept ingest's session", "broker", in.o.BrokerURL, "client_id", in.o.ClientID)
	case first:
		in.log.Info("new session on the broker", "broker", in.o.BrokerURL, "client_id", in.o.ClientID)
	default:
		in.m.sessionsLost.Inc()
		in.log.Error("the broker did not keep ingest's session across the reconnect: readings devices published "+
			"while it was unsubscribed were not queued and are lost; enable persistence on the broker "+
			"(Mosquitto: persistence true, a persistence_location its user can write)",
			"broker", in.o.BrokerURL, "client_id", in.o.ClientID)
	}
}

func (in *Ingester) onConnectionLost(_ mqtt.Client, err error) {
	in.setConnected(false)
	in.log.Warn("connection to MQTT broker lost; reconnecting", "broker", in.o.BrokerURL, "err", err)
}

type topicKind int

const (
	topicOther topicKind = iota
	topicDevice
	topicStatus
	topicGateway
)

// parseTopic splits devices/<id>/telemetry, devices/<id>/status and
// gateways/<id>/telemetry. The id is a substring of topic.
func parseTopic(topic string) (topicKind, string) {
	var rest string
	var gateway bool
	switch {
	case strings.HasPrefix(topic, "devices/"):
		rest = topic[len("devices/"):]
	case strings.HasPrefix(topic, "gateways/"):
		rest, gateway = topic[len("gateways/"):], true
	default:
		return topicOther, ""
	}
	id, leaf, ok := strings.Cut(rest, "/")
	if !ok {
		return topicOther, ""
	}
	switch {
	case leaf == "telemetry" && gateway:
		return topicGateway, id
	case leaf == "telemetry":
		return topicDevice, id
	case leaf == "status" && !gateway:
		return topicStatus, id
	}
	return topicOther, id
}

// shard assigns an id to a worker (FNV-1a).
func shard(id string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

func (in *Ingester) getChunk() *chunk { return in.pool.Get().(*chunk) }

// ack acknowledges the chunk's message. A QoS 1 message from an
// external broker gets its PUBACK queued straight on the connection it
// arrived on. paho's own Ack (a closure, two packet objects, a key
// formatted with fmt.Sprintf and a hand-off to its writer goroutine per
// message) was a sixth of ingest's CPU behind Mosquitto. Were that
// connection closed meanwhile, the PUBACK is dropped and the broker sends
// the message again, as paho drops an Ack after its connection went.
// Any other message (QoS 0, the embedded broker's, a replay) acknowledges
// itself.
func (c *chunk) ack() {
	if c.conn == nil {
		c.msg.Ack()
		return
	}
	if !c.acked {
		c.acked = true
		c.conn.puback(c.mid)
	}
}

func (in *Ingester) putChunk(c *chunk) {
	if cap(c.lines) > 1<<20 {
		return // do not keep an outsized buffer alive
	}
	lines, times := c.lines[:0], c.times[:0]
	*c = chunk{}
	c.lines, c.times = lines, times
	in.pool.Put(c)
}

// --- workers ---------------------------------------------------------------

// worker owns a decoder and the buffers reused for every message.
type worker struct {
	in       *Ingester
	dec      *decoder
	accepted []telemetry.Reading
	// firstReason is the first rejection of the current message: its
	// reason when nothing of it is accepted.
	firstReason string
}

func (in *Ingester) newWorker() *worker {
	return &worker{in: in, dec: newDecoder(decodeLimits{
		maxPayload:  in.o.MaxPayloadBytes,
		maxReadings: in.o.MaxReadings,
		maxAge:      in.o.MaxAge,
		maxFuture:   in.o.MaxFuture,
	})}
}

func (in *Ingester) work(ctx context.Context, i int) {
	w := in.newWorker()
	for {
		select {
		case it := <-in.inbox[i]:
			c := in.getChunk()
			c.msg, c.conn, c.mid = it.m, it.conn, it.mid
			if !w.process(ctx, c) {
				in.putChunk(c)
			}
		case <-in.stopping:
			return
		}
	}
}

// readingReasons are the reasons a single reading is rejected for, in the
// order of worker.rejectReadings's tally.
var readingReasons = [...]string{ReasonBadValue, ReasonBadMetric, ReasonBadTimestamp}

// process takes c's message (c.msg; the rest of c empty but for how the
// message is acknowledged) and encodes its readings in c. It returns true
// when it handed c over to the writer, which then owns it; otherwise the
// message is settled (acknowledged, or left for the broker to send again)
// and c is the caller's to put back, with the message when it is c.local.
func (w *worker) process(ctx context.Context, c *chunk) bool {
	in := w.in
	m := c.msg
	now := in.o.Now()
	// A replayed dead letter arrived when the broker first delivered it:
	// its readings without ts were taken then, not now.
	arrival := now
	if rm, ok := m.(*replayMessage); ok && !rm.entry.ReceivedAt.IsZero() {
		arrival = rm.entry.ReceivedAt
	}
	topic := m.Topic()
	kind, id := parseTopic(topic)
	in.accReceived()
	w.firstReason = ""
	switch kind {
	case topicStatus:
		w.status(c, id, now)
		return false
	case topicOther:
		// Only a misconfigured broker bridge sends this; nothing to store.
		in.log.Warn("message on an unexpected topic ignored", "topic", topic)
		in.m.messages.WithLabelValues(outcomeRejected).Inc()
		in.accRejected(ReasonBadTopic)
		c.ack()
		return false
	}
	gateway := kind == topicGateway
	payload := m.Payload()
	base := deadLetter{DeadLetter: DeadLetter{Topic: topic, ReceivedAt: arrival}, payload: payload, msg: in.msgSeq.Add(1)}
	if gateway {
		base.GatewayID = id
	} else {
		base.DeviceID = id
	}

	if err := w.dec.decodeAt(payload, gateway, now, arrival); err != nil {
		var de *decodeError
		errors.As(err, &de)
		dl := base
		dl.Reason, dl.Error = de.reason, de.msg
		in.enqueueDeadLetter(dl, false)
		in.m.messages.WithLabelValues(outcomeRejected).Inc()
		in.accRejected(de.reason)
		c.ack()
		return false
	}
	d := w.dec
	in.m.readingsReceived.Add(float64(len(d.readings)))
	if !gateway {
		d.groups[0].id = id
	}

	c.received = now
	c.deviceID, c.gatewayID = base.DeviceID, base.GatewayID
	w.accepted = w.accepted[:0]
	unencodable := 0
	for gi := range d.groups {
		g := &d.groups[gi]
		rs := d.readings[g.rStart:g.rEnd]
		if len(rs) == 0 {
			continue
		}
		dl := base
		dl.DeviceID = g.id
		dev, reason, msg, abandon := w.checkGroup(ctx, g, gateway, id)
		if abandon {
			// Run is ending while auto-registering: leave the message
			// unacknowledged for the next session (it stays pending).
			return false
		}
		if reason != "" {
			w.reject(dl, reason, msg, len(rs))
			continue
		}
		ok, newest := w.rejectReadings(dl, rs)
		if ok == 0 {
			continue
		}
		if !in.lim.allow(dev, now, newest) {
			w.reject(dl, ReasonRateLimited, fmt.Sprintf("device %q publishes faster than %g times its expected rate", g.id, in.o.DeviceRateLimit), ok)
			continue
		}
		// dev.ID, not g.id: for a device's own topic g.id is a substring
		// of the topic, which the embedded broker decodes without copying
		// out of the packet, and consumers keep the id (live state, stream
		// numbering): it would keep each device's last packet alive.
		tags := [...]store.Tag{{Key: "device_id", Value: dev.ID}, {Key: "domain", Value: dev.Domain}, {Key: "site", Value: dev.Site}}
		for i := range rs {
			r := &rs[i]
			if r.reason != "" {
				continue
			}
			vals := d.values[r.vStart:r.vEnd]
			w.accepted = append(w.accepted, telemetry.Reading{DeviceID: dev.ID, Time: r.ts, Values: vals, Device: dev})
			before := len(c.lines)
			c.lines = store.AppendPoint(c.lines, dev.Type, tags[:], vals, r.ts)
			if len(c.lines) == before {
				unencodable++ // e.g. a device without a type: no measurement
				continue
			}
			c.points++
			c.times = append(c.times, r.ts.UnixNano())
		}
	}
	if len(w.accepted) > 0 {
		for _, cons := range in.o.Consumers {
			cons.Consume(w.accepted)
		}
	}
	if unencodable > 0 {
		in.m.dropped.WithLabelValues("unencodable").Add(float64(unencodable))
		in.log.Warn("readings without a measurement dropped (device has no type?)", "topic", topic, "readings", unencodable)
	}
	if c.points == 0 {
		outcome := outcomeRejected
		if unencodable > 0 {
			outcome = outcomeDropped
		}
		in.m.messages.WithLabelValues(outcome).Inc()
		if unencodable > 0 {
			in.accDropped(ReasonUnencodable, 1)
		} else {
			in.accRejected(w.firstReason)
		}
		c.ack()
		return false
	}
	// A plain send first: a select over two channels costs a lock of
	// each per message, and there is usually room. Sending while Run is
	// ending is fine: the writer takes every chunk sent before the channel
	// is closed.
	select {
	case in.chunks <- c:
		return true
	default:
	}
	select {
	case in.chunks <- c:
		return true
	case <-in.stopping:
		// Unacknowledged: delivered again next session. It stays pending
		// in this process's accounting.
		return false
	}
}

// checkGroup looks the device of a group up and checks it may publish.
func (w *worker) checkGroup(ctx context.Context, g *decGroup, gateway bool, gatewayID string) (dev *telemetry.Device, reason, msg string, abandon bool) {
	if g.reason != "" {
		return nil, g.reason, g.err, false
	}
	in := w.in
	dev, ok := in.o.Lookup(g.id)
	if !ok && !gateway && in.o.AutoRegister != nil && telemetry.ValidID(g.id) {
		d, err := in.o.AutoRegister(ctx, g.id)
		if err != nil {
			if ctx.Err() != nil {
				return nil, "", "", true
			}
			return nil, ReasonUnknownDevice, fmt.Sprintf("auto-register device %q: %v", g.id, err), false
		}
		dev, ok = d, d != nil
		if ok {
			in.log.Info("device auto-registered", "device_id", g.id)
		}
	}
	switch {
	case !ok || dev == nil:
		return nil, ReasonUnknownDevice, fmt.Sprintf("device %q is not registered", g.id), false
	case dev.Lifecycle == telemetry.LifecycleRetired:
		return nil, ReasonRetired, fmt.Sprintf("device %q is retired", g.id), false
	case gateway && dev.GatewayID != gatewayID:
		return nil, ReasonNotAssigned, fmt.Sprintf("device %q is not assigned to gateway %q", g.id, gatewayID), false
	}
	return dev, "", "", false
}

// rejectReadings dead-letters a group's bad readings (one dead letter per
// reason) and returns how many are good and the newest good ts.
func (w *worker) rejectReadings(dl deadLetter, rs []decReading) (ok int, newest time.Time) {
	var tally [len(readingReasons)]struct {
		n   int
		err string
	}
	for i := range rs {
		r := &rs[i]
		if r.reason == "" {
			ok++
			if r.ts.After(newest) {
				newest = r.ts
			}
			continue
		}
		for k, reason := range readingReasons {
			if r.reason == reason {
				if tally[k].n == 0 {
					tally[k].err = r.err
					if len(rs) > 1 {
						tally[k].err = fmt.Sprintf("reading %d: %s", i, r.err)
					}
				}
				tally[k].n++
			}
		}
	}
	for k, t := range tally {
		if t.n > 0 {
			msg := t.err
			if t.n > 1 {
				msg = fmt.Sprintf("%d readings rejected; first: %s", t.n, t.err)
			}
			w.reject(dl, readingReasons[k], msg, t.n)
		}
	}
	return ok, newest
}

func (w *worker) reject(dl deadLetter, reason, msg string, readings int) {
	dl.Reason, dl.Error, dl.Readings = reason, msg, readings
	if w.firstReason == "" {
		w.firstReason = reason
	}
	w.in.m.readingsRejected.WithLabelValues(reason).Add(float64(readings))
	w.in.enqueueDeadLetter(dl, false)
}

// status handles devices/<id>/status: "online" or "offline".
func (w *worker) status(c *chunk, id string, now time.Time) {
	m := c.msg
	in := w.in
	defer c.ack()
	payload := m.Payload()
	if len(payload) == 0 {
		// Clearing a retained status (a deleted device): nothing to say.
		in.m.messages.WithLabelValues(outcomeStatus).Inc()
		in.accStored(1)
		return
	}
	dl := deadLetter{DeadLetter: DeadLetter{Topic: m.Topic(), DeviceID: id, ReceivedAt: now}, payload: payload, msg: in.msgSeq.Add(1)}
	var online bool
	switch string(payload) {
	case telemetry.StatusOnline:
		online = true
	case telemetry.StatusOffline:
	default:
		dl.Reason, dl.Error = ReasonBadValue, `status must be "online" or "offline"`
		in.enqueueDeadLetter(dl, false)
		in.m.messages.WithLabelValues(outcomeRejected).Inc()
		in.accRejected(dl.Reason)
		return
	}
	dev, ok := in.o.Lookup(id)
	switch {
	case !ok || dev == nil:
		dl.Reason, dl.Error = ReasonUnknownDevice, fmt.Sprintf("device %q is not registered", id)
	case dev.Lifecycle == telemetry.LifecycleRetired:
		dl.Reason, dl.Error = ReasonRetired, fmt.Sprintf("device %q is retired", id)
	}
	if dl.Reason != "" {
		in.enqueueDeadLetter(dl, false)
		in.m.messages.WithLabelValues(outcomeRejected).Inc()
		in.accRejected(dl.Reason)
		return
	}
	if in.o.Status != nil {
		in.o.Status.DeviceStatus(dev.ID, online, now)
	}
	in.m.messages.WithLabelValues(outcomeStatus).Inc()
	in.accStored(1)
}
