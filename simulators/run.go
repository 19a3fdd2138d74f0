package simulators

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Run simulates the fleet until ctx is done: it builds the fleet, provisions
// it through the API when APIURL is set, connects every device that has its
// own connection (gateway-assigned sensors ride on their gateway), and
// publishes readings on a single scheduler. On ctx it publishes "offline"
// for every device, disconnects, and returns nil.
func Run(ctx context.Context, o Options) error {
	return run(ctx, o, nil)
}

// LoadFleet reads the fleet (FleetYAML, else FleetFile) and builds it with
// the options' scaling and seed.
func LoadFleet(o Options) ([]DeviceSpec, error) {
	o = o.withDefaults()
	data := o.FleetYAML
	if len(data) == 0 {
		b, err := os.ReadFile(o.FleetFile)
		if err != nil {
			return nil, fmt.Errorf("fleet_file: read %s (run from the repository root or pass the fleet file): %w", o.FleetFile, err)
		}
		data = b
	}
	f, err := ParseFleet(data)
	if err != nil {
		return nil, err
	}
	devs, err := f.Build(BuildOptions{Devices: o.Devices, Rate: o.Rate, Seed: o.Seed})
	if err != nil {
		return nil, err
	}
	if len(devs) == 0 {
		return nil, errors.New("fleet: no devices (every count is 0)")
	}
	return devs, nil
}

// run is Run with a hook that sees the running simulation (tests).
func run(ctx context.Context, o Options, ready func(*sim)) error {
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return fmt.Errorf("simulator options: %w", err)
	}
	specs, err := LoadFleet(o)
	if err != nil {
		return fmt.Errorf("load fleet: %w", err)
	}
	log := o.Logger.With("component", "simulator")

	var secrets map[string]string
	if o.APIURL != "" {
		start := time.Now()
		secrets, err = Provision(ctx, o.APIURL, o.Token, specs)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		log.Info("fleet provisioned", "devices", len(secrets), "api", o.APIURL, "took", time.Since(start).Round(time.Millisecond))
	}

	s := newSim(o, log, specs, secrets)
	if err := s.connect(ctx); err != nil {
		s.shutdown()
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	log.Info("fleet running", "devices", len(s.devs), "connections", len(s.conns),
		"readings_per_s", fmt.Sprintf("%.1f", ReadingsPerSecond(specs)), "broker", o.BrokerURL, "faults", o.Faults)
	if ready != nil {
		ready(s)
	}

	var wg sync.WaitGroup
	for range o.PublishWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.publishLoop(ctx)
		}()
	}
	s.schedule(ctx)
	close(s.jobs)
	wg.Wait()
	s.shutdown()
	s.logProgress()
	log.Info("fleet stopped")
	return nil
}

// wireReading is one reading as devices publish it.
type wireReading struct {
	TS     int64          `json:"ts"`
	Values map[string]any `json:"values"`
}

// sim is one running fleet. Models, fault state and gateway buffers are
// touched only by the scheduler goroutine; connections are shared with the
// publish workers.
type sim struct {
	o     Options
	log   *slog.Logger
	devs  []*simDevice
	conns []*deviceConn
	jobs  chan pubJob
	stats struct {
		published, failed, skipped, gwDropped, faults atomic.Int64
	}
}

type simDevice struct {
	spec    *DeviceSpec
	conn    *deviceConn // own connection; nil for a sensor behind a gateway
	gw      *simDevice  // the gateway a sensor sends through
	pending []gwReading // a gateway's buffered sensor readings
	rng     *rand.Rand  // jitter and faults
	fault   faultState
}

type gwReading struct {
	id string
	r  wireReading
}

// maxPending bounds a gateway's buffer while it cannot publish; the oldest
// readings go first. maxPerMessage keeps a gateway message well under
// ingest's 1000-reading and 64 KiB limits.
const (
	maxPending    = 2000
	maxPerMessage = 250
)

type pubJob struct {
	conn     *deviceConn
	topic    string
	payload  []byte
	qos      byte
	retained bool
}

func newSim(o Options, log *slog.Logger, specs []DeviceSpec, secrets map[string]string) *sim {
	s := &sim{o: o, log: log, jobs: make(chan pubJob, 4*o.PublishWorkers)}
	byID := make(map[string]*simDevice, len(specs))
	for i := range specs {
		d := &simDevice{spec: &specs[i], rng: newRand(specs[i].Seed, "run")}
		s.devs = append(s.devs, d)
		byID[d.spec.ID] = d
	}
	for _, d := range s.devs {
		if d.spec.GatewayID != "" {
			d.gw = byID[d.spec.GatewayID]
			continue
		}
		d.conn = newDeviceConn(o, d.spec.ID, secrets[d.spec.ID], log)
		s.conns = append(s.conns, d.conn)
	}
	return s
}

// connect connects every device, a bounded number at a time. It fails on
// the first device that cannot connect after a few tries (a wrong broker
// address or credentials would fail them all).
func (s *sim) connect(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, s.o.ConnectConcurrency)
		once     sync.Once
		firstErr error
	)
	for _, c := range s.conns {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := c.connect(ctx); err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// shutdown says goodbye for every connected device: "offline" retained,
// then a clean disconnect, so the last will is not needed.
func (s *sim) shutdown() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.o.ConnectConcurrency)
	for _, c := range s.conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.close()
		}()
	}
	wg.Wait()
}

// event is a device's next reading on the scheduler's heap.
type event struct {
	due   time.Time
	dev   int
	first bool
}

type eventHeap []event

func (h eventHeap) Len() int           { return len(h) }
func (h eventHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h eventHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)        { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// schedule runs every device's rhythm on one goroutine and one timer: a heap
// of next-reading times, so a large fleet needs no ticker per device.
func (s *sim) schedule(ctx context.Context) {
	now := time.Now()
	h := make(eventHeap, 0, len(s.devs))
	for i, d := range s.devs {
		// Devices start spread over their first interval (at most 2 s), as
		// a fleet powered up together would not fire in lockstep.
		spread := min(d.spec.Interval, 2*time.Second)
		h = append(h, event{due: now.Add(time.Duration(d.rng.Float64() * float64(spread))), dev: i, first: true})
	}
	heap.Init(&h)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	nextProgress := now.Add(s.o.ProgressEvery)
	for len(h) > 0 {
		now = time.Now()
		for len(h) > 0 && !h[0].due.After(now) {
			ev := heap.Pop(&h).(event)
			d := s.devs[ev.dev]
			if !s.tick(ctx, d, now) {
				return
			}
			next := ev.due.Add(d.jittered())
			if ev.first {
				// Everyone reported at start-up; now spread the fleet over
				// its intervals so that it does not pulse in step.
				next = now.Add(time.Duration((0.1 + 0.9*d.rng.Float64()) * float64(d.spec.Interval)))
			}
			if next.Before(now) {
				// Fell behind (a slow broker): skip ahead rather than burst.
				next = now.Add(d.jittered())
			}
			heap.Push(&h, event{due: next, dev: ev.dev})
		}
		if !now.Before(nextProgress) {
			s.logProgress()
			nextProgress = now.Add(s.o.ProgressEvery)
		}
		wake := h[0].due
		if nextProgress.Before(wake) {
			wake = nextProgress
		}
		timer.Reset(time.Until(wake))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// jittered is the device's interval ±10%.
func (d *simDevice) jittered() time.Duration {
	iv := float64(d.spec.Interval)
	return time.Duration(iv * (0.9 + 0.2*d.rng.Float64()))
}

// tick takes one reading of d and sends or buffers it. It returns false
// when ctx ended while handing a message to the publishers.
func (s *sim) tick(ctx context.Context, d *simDevice, now time.Time) bool {
	values, ok := s.sample(d, now)
	if d.gw != nil {
		if ok {
			d.gw.buffer(s, gwReading{id: d.spec.ID, r: wireReading{TS: now.UnixMilli(), Values: values}})
		}
		return true
	}
	if s.o.Faults && d.conn.open() && d.rng.Float64() < s.o.FaultRates.Offline {
		down := time.Duration((1 + 4*d.rng.Float64()) * float64(time.Minute))
		s.fault(d, "offline", "for", down.Round(time.Second))
		d.conn.cut(now.Add(down))
	}
	if !d.conn.open() {
		s.stats.skipped.Add(1)
		return true
	}
	if ok {
		b, err := json.Marshal(wireReading{TS: now.UnixMilli(), Values: values})
		if err != nil {
			s.log.Error("encode reading", "device_id", d.spec.ID, "err", err)
			return true
		}
		if !s.send(ctx, d, "devices/"+d.spec.ID+"/telemetry", b) {
			return false
		}
	}
	if d.spec.Type == "gateway" {
		return s.flush(ctx, d)
	}
	return true
}

// buffer keeps a sensor's reading for the gateway's next flush.
func (gw *simDevice) buffer(s *sim, r gwReading) {
	if len(gw.pending) >= maxPending {
		gw.pending = gw.pending[1:]
		s.stats.gwDropped.Add(1)
	}
	gw.pending = append(gw.pending, r)
}

// flush publishes a gateway's buffered readings as gateway messages.
func (s *sim) flush(ctx context.Context, gw *simDevice) bool {
	for len(gw.pending) > 0 {
		n := min(len(gw.pending), maxPerMessage)
		msg := make(map[string][]wireReading)
		for _, r := range gw.pending[:n] {
			msg[r.id] = append(msg[r.id], r.r)
		}
		b, err := json.Marshal(msg)
		if err != nil {
			s.log.Error("encode gateway message", "device_id", gw.spec.ID, "err", err)
			return true
		}
		if !s.send(ctx, gw, "gateways/"+gw.spec.ID+"/telemetry", b) {
			return false
		}
		gw.pending = gw.pending[n:]
	}
	gw.pending = nil // let the array go once drained
	return true
}

// send hands a message to the publish workers, maybe malformed by a fault.
// It blocks while they are busy: a slow broker slows the fleet down.
func (s *sim) send(ctx context.Context, d *simDevice, topic string, payload []byte) bool {
	if s.o.Faults && d.rng.Float64() < s.o.FaultRates.Malformed {
		payload = payload[:len(payload)/2]
		s.fault(d, "malformed", "topic", topic)
	}
	select {
	case s.jobs <- pubJob{conn: d.conn, topic: topic, payload: payload, qos: s.o.QoS}:
		return true
	case <-ctx.Done():
		return false
	}
}

// publishLoop publishes jobs until the channel closes; after ctx ends it
// drops what is left so that shutdown does not wait on a dead broker.
func (s *sim) publishLoop(ctx context.Context) {
	for j := range s.jobs {
		if ctx.Err() != nil {
			continue
		}
		tok := j.conn.client.Publish(j.topic, j.qos, j.retained, j.payload)
		select {
		case <-tok.Done():
			if tok.Error() != nil {
				s.stats.failed.Add(1)
			} else {
				s.stats.published.Add(1)
			}
		case <-time.After(10 * time.Second):
			s.stats.failed.Add(1)
		case <-ctx.Done():
		}
	}
}

func (s *sim) logProgress() {
	s.log.Info("simulator progress",
		"messages_published", s.stats.published.Load(), "messages_failed", s.stats.failed.Load(),
		"skipped_offline", s.stats.skipped.Load(), "gateway_dropped", s.stats.gwDropped.Load(),
		"faults", s.stats.faults.Load())
}

// deviceConn is one device's MQTT connection.
type deviceConn struct {
	id     string
	client mqtt.Client
	log    *slog.Logger
	// blockUntil (unix ns) makes dials fail: the offline fault keeps the
	// device away from the broker until then.
	blockUntil atomic.Int64
	mu         sync.Mutex
	raw        net.Conn // the live TCP connection, so the offline fault can cut it
}

func statusTopic(id string) string { return "devices/" + id + "/status" }

func newDeviceConn(o Options, id, secret string, log *slog.Logger) *deviceConn {
	c := &deviceConn{id: id, log: log}
	opts := mqtt.NewClientOptions().
		AddBroker(o.BrokerURL).
		SetClientID(id).
		SetUsername(id).
		SetPassword(secret).
		SetCleanSession(true).
		SetOrderMatters(false).
		SetKeepAlive(30*time.Second).
		SetConnectTimeout(10*time.Second).
		SetWriteTimeout(10*time.Second).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(10*time.Second).
		SetWill(statusTopic(id), "offline", 1, true).
		SetStore(noStore{}).
		SetOnConnectHandler(func(cl mqtt.Client) {
			// Runs on its own goroutine after every (re)connect.
			tok := cl.Publish(statusTopic(id), 1, true, "online")
			if tok.WaitTimeout(10*time.Second) && tok.Error() != nil {
				log.Debug("publish online", "device_id", id, "err", tok.Error())
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			log.Debug("device connection lost", "device_id", id, "err", err)
		})
	if u, err := url.Parse(o.BrokerURL); err == nil && (u.Scheme == "tcp" || u.Scheme == "mqtt") {
		opts.SetCustomOpenConnectionFn(c.dial)
	}
	c.client = mqtt.NewClient(opts)
	return c
}

// dial opens the TCP connection for paho, remembering it so that cut can
// close it as a failing radio link would.
func (c *deviceConn) dial(u *url.URL, opts mqtt.ClientOptions) (net.Conn, error) {
	if time.Now().UnixNano() < c.blockUntil.Load() {
		return nil, errors.New("simulated outage")
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "1883")
	}
	conn, err := (&net.Dialer{Timeout: opts.ConnectTimeout}).Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.raw = conn
	c.mu.Unlock()
	return conn, nil
}

// cut drops the connection without a DISCONNECT, so the broker publishes
// the last will, and keeps the device away until until.
func (c *deviceConn) cut(until time.Time) {
	c.blockUntil.Store(until.UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw != nil {
		// Not Close: paho takes "use of closed network connection" for its
		// own disconnect and would not notice. An expired deadline fails
		// reads and writes like a dead link; paho then drops the socket
		// without DISCONNECT and reconnects.
		_ = c.raw.SetDeadline(time.Unix(1, 0))
	}
}

func (c *deviceConn) open() bool { return c.client.IsConnectionOpen() }

func (c *deviceConn) connect(ctx context.Context) error {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		tok := c.client.Connect()
		select {
		case <-tok.Done():
			err = tok.Error()
		case <-ctx.Done():
			return ctx.Err()
		}
		if err == nil {
			return nil
		}
		select {
		case <-time.After(time.Duration(attempt) * time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return fmt.Errorf("connect device %s to the broker: %w", c.id, err)
}

// close publishes "offline" and disconnects cleanly.
func (c *deviceConn) close() {
	if c.client.IsConnectionOpen() {
		c.client.Publish(statusTopic(c.id), 1, true, "offline").WaitTimeout(3 * time.Second)
	}
	c.client.Disconnect(250)
}

// noStore keeps no in-flight messages: a sensor whose link drops loses
// what was in flight, as a real one would. (paho's resend of stored
// messages after a reconnect also races with its old writer goroutine.)
type noStore struct{}

func (noStore) Open()                             {}
func (noStore) Put(string, packets.ControlPacket) {}
func (noStore) Get(string) packets.ControlPacket  { return nil }
func (noStore) All() []string                     { return nil }
func (noStore) Del(string)                        {}
func (noStore) Close()                            {}
func (noStore) Reset()                            {}
