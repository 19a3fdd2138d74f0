package simulators

import (
	"container/heap"
	"context"
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
// own connection (gateway-assigned sensors ride on their gateway, devices
// beyond MaxConnections on a multiplexer), and publishes readings on a
// single scheduler. On ctx it publishes "offline" for every device,
// disconnects, and returns nil.
func Run(ctx context.Context, o Options) error {
	return run(ctx, o, nil)
}

// LoadFleet reads the fleet (FleetYAML, else FleetFile) and builds it with
// the options' scaling, seed and multiplexers: the devices Run simulates,
// and so the devices provisioning must register.
func LoadFleet(o Options) ([]DeviceSpec, error) {
	_, devs, err := loadFleet(o.withDefaults())
	return devs, err
}

func loadFleet(o Options) (*Fleet, []DeviceSpec, error) {
	data := o.FleetYAML
	if len(data) == 0 {
		b, err := os.ReadFile(o.FleetFile)
		if err != nil {
			return nil, nil, fmt.Errorf("fleet_file: read %s (run from the repository root or pass the fleet file): %w", o.FleetFile, err)
		}
		data = b
	}
	f, err := ParseFleet(data)
	if err != nil {
		return nil, nil, err
	}
	// Intervals are simulated time: with a speedup the wall rate is
	// speedup times the simulated one, so a wall rate asks for a slower
	// simulated one.
	devs, err := f.Build(BuildOptions{Devices: o.Devices, Rate: o.Rate / max(o.Speedup, 1), Seed: o.Seed})
	if err != nil {
		return nil, nil, err
	}
	if len(devs) == 0 {
		return nil, nil, errors.New("fleet: no devices (every count is 0)")
	}
	devs, err = Multiplex(devs, o.MaxConnections, o.MuxDevices, o.MuxInterval, o.Seed)
	if err != nil {
		return nil, nil, err
	}
	return f, devs, nil
}

// run is Run with a hook that sees the running simulation (tests).
func run(ctx context.Context, o Options, ready func(*sim)) error {
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return fmt.Errorf("simulator options: %w", err)
	}
	wall0 := time.Now()
	if err := o.validateStart(wall0); err != nil {
		return fmt.Errorf("simulator options: %w", err)
	}
	fleet, specs, err := loadFleet(o)
	if err != nil {
		return fmt.Errorf("load fleet: %w", err)
	}
	if o.Faults && o.FaultRates == (FaultRates{}) {
		o.FaultRates = DefaultFaultRates()
		if fleet.Faults != nil {
			o.FaultRates = *fleet.Faults
		}
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

	s := newSim(o, log, specs, func(id string) *deviceConn { return newDeviceConn(o, id, secrets[id], log) })
	if err := s.connect(ctx); err != nil {
		s.shutdown()
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	wall0 = time.Now()
	s.clock = newSimClock(wall0, o.Start, o.Speedup)
	muxes := 0
	for _, d := range s.devs {
		if d.spec.Multiplexer {
			muxes++
		}
	}
	log.Info("fleet running", "devices", len(s.devs), "connections", len(s.conns), "multiplexers", muxes,
		"readings_per_s", fmt.Sprintf("%.1f", ReadingsPerSecond(specs)*o.Speedup), "broker", o.BrokerURL,
		"faults", o.Faults, "speedup", o.Speedup, "start", s.clock.sim0.Format(time.RFC3339))
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
	s.schedule(ctx, time.Now)
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
	clock simClock
	// emit hands a message on; by default to the publish workers (tests
	// collect them instead).
	emit       func(ctx context.Context, j pubJob) bool
	gwOrder    map[string][]int
	stats      struct{ readings, published, failed, skipped, gwDropped, faults atomic.Int64 }
	faultStats faultCounters
}

type simDevice struct {
	spec       *DeviceSpec
	names      []string    // metric names, sorted, for the encoder
	conn       *deviceConn // own connection; nil for a sensor behind a gateway
	gw         *simDevice  // the gateway a sensor sends through
	pending    []gwReading // a gateway's buffered sensor readings
	pendingCap int
	rng        *rand.Rand // jitter and faults
	fault      faultState
}

type gwReading struct {
	id  string
	raw []byte // the encoded reading
}

// maxPending is the least a gateway buffers while it cannot publish; the
// oldest readings go first. maxPerMessage and maxMessageBytes keep a
// gateway message well under ingest's 1000-reading and 64 KiB limits.
const (
	maxPending      = 2000
	maxPerMessage   = 250
	maxMessageBytes = 48 << 10
)

type pubJob struct {
	conn     *deviceConn
	topic    string
	payload  []byte
	qos      byte
	retained bool
}

// newSim builds the running fleet; newConn makes a device's connection.
func newSim(o Options, log *slog.Logger, specs []DeviceSpec, newConn func(id string) *deviceConn) *sim {
	s := &sim{o: o, log: log, jobs: make(chan pubJob, 4*o.PublishWorkers), gwOrder: map[string][]int{}}
	s.clock = newSimClock(time.Now(), o.Start, o.Speedup)
	s.emit = func(ctx context.Context, j pubJob) bool {
		select {
		case s.jobs <- j:
			return true
		case <-ctx.Done():
			return false
		}
	}
	byID := make(map[string]*simDevice, len(specs))
	for i := range specs {
		d := &simDevice{spec: &specs[i], rng: newRand(specs[i].Seed, "run"), names: sortedNames(specs[i].Metrics)}
		s.devs = append(s.devs, d)
		byID[d.spec.ID] = d
	}
	perFlush := map[*simDevice]float64{}
	for _, d := range s.devs {
		if d.spec.GatewayID != "" {
			d.gw = byID[d.spec.GatewayID]
			perFlush[d.gw] += s.wallInterval(d.gw, o.Speedup).Seconds() / s.wallInterval(d, o.Speedup).Seconds()
			continue
		}
		d.conn = newConn(d.spec.ID)
		s.conns = append(s.conns, d.conn)
	}
	for _, d := range s.devs {
		d.pendingCap = max(maxPending, int(4*perFlush[d]))
	}
	return s
}

// wallInterval is d's interval in wall time at the given speed:
// multiplexers keep theirs, the others run faster with simulated time.
func (s *sim) wallInterval(d *simDevice, speed float64) time.Duration {
	if d.spec.Multiplexer || speed <= 1 {
		return d.spec.Interval
	}
	return time.Duration(float64(d.spec.Interval) / speed)
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

// scheduler is every device's rhythm on one heap of next-reading times (wall
// time), so a large fleet needs no ticker per device.
type scheduler struct {
	s *sim
	h eventHeap
}

func (s *sim) newScheduler(now time.Time) *scheduler {
	sc := &scheduler{s: s, h: make(eventHeap, 0, len(s.devs))}
	speed := s.clock.speedAt(now)
	for i, d := range s.devs {
		// Devices start spread over their first interval (at most 2 s), as
		// a fleet powered up together would not fire in lockstep.
		spread := min(s.wallInterval(d, speed), 2*time.Second)
		sc.h = append(sc.h, event{due: now.Add(time.Duration(d.rng.Float64() * float64(spread))), dev: i, first: true})
	}
	heap.Init(&sc.h)
	return sc
}

// runDue ticks every device due at or before now. It returns false when ctx
// ended while handing a message on.
func (sc *scheduler) runDue(ctx context.Context, now time.Time) bool {
	s := sc.s
	speed := s.clock.speedAt(now)
	for len(sc.h) > 0 && !sc.h[0].due.After(now) {
		ev := heap.Pop(&sc.h).(event)
		d := s.devs[ev.dev]
		// The reading is taken at its due time, not when the scheduler got
		// to it, so timestamps keep the device's rhythm exactly.
		if !s.tick(ctx, d, ev.due) {
			return false
		}
		iv := s.wallInterval(d, speed)
		next := ev.due.Add(d.jittered(iv))
		if ev.first {
			// Everyone reported at start-up; now spread the fleet over
			// its intervals so that it does not pulse in step.
			next = now.Add(time.Duration((0.1 + 0.9*d.rng.Float64()) * float64(iv)))
		}
		if next.Before(now) {
			// Fell behind (a slow broker): skip ahead rather than burst.
			next = now.Add(d.jittered(iv))
		}
		heap.Push(&sc.h, event{due: next, dev: ev.dev})
	}
	return true
}

// schedule runs the fleet on one goroutine and one timer until ctx ends.
func (s *sim) schedule(ctx context.Context, clock func() time.Time) {
	now := clock()
	sc := s.newScheduler(now)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	nextProgress := now.Add(s.o.ProgressEvery)
	wasLive := s.clock.live(now)
	for len(sc.h) > 0 {
		now = clock()
		if !wasLive && s.clock.live(now) {
			wasLive = true
			s.log.Info("simulated time caught up with the clock; continuing live", "speedup", 1)
		}
		if !sc.runDue(ctx, now) {
			return
		}
		if !now.Before(nextProgress) {
			s.logProgress()
			nextProgress = now.Add(s.o.ProgressEvery)
		}
		wake := sc.h[0].due
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

// jittered is iv ±10%.
func (d *simDevice) jittered(iv time.Duration) time.Duration {
	return time.Duration(float64(iv) * (0.9 + 0.2*d.rng.Float64()))
}

// tick takes one reading of d at wall time wall and sends or buffers it. It
// returns false when ctx ended while handing a message on.
func (s *sim) tick(ctx context.Context, d *simDevice, wall time.Time) bool {
	t := s.clock.at(wall)
	values, ok := s.sample(d, t)
	var raw []byte
	dup := false
	if ok {
		s.stats.readings.Add(1)
		ts := s.timestamp(d, t)
		raw = appendReading(make([]byte, 0, 32+24*len(d.names)), ts.UnixMilli(), values, d.names)
		if s.o.Faults && !d.spec.Multiplexer && s.roll(d, FaultDuplicate, s.o.FaultRates.Duplicate) {
			dup = true
			s.fault(d, FaultDuplicate, t, "expect", "stored once (same ts)")
		}
	}
	if d.gw != nil {
		if ok {
			d.gw.buffer(s, gwReading{id: d.spec.ID, raw: raw})
			if dup {
				d.gw.buffer(s, gwReading{id: d.spec.ID, raw: raw})
			}
		}
		return true
	}
	isGateway := d.spec.Type == "gateway"
	if s.o.Faults && !d.spec.Multiplexer && d.conn.openAt(wall) {
		if isGateway {
			if s.roll(d, FaultBackhaulLoss, s.o.FaultRates.BackhaulLoss) {
				down := time.Duration((1 + 9*d.rng.Float64()) * float64(time.Minute))
				d.fault.backhaul, d.fault.lose = true, d.rng.IntN(3) == 0
				expect := "gateway offline, its sensors' readings arrive late on return"
				if d.fault.lose {
					expect = "gateway offline, its sensors' readings lost (reboot)"
				}
				s.fault(d, FaultBackhaulLoss, t, "for", down.Round(time.Second), "carried", len(d.pending), "lose_buffer", d.fault.lose, "expect", expect)
				d.conn.cut(wall.Add(down))
			}
		} else if s.roll(d, FaultOffline, s.o.FaultRates.Offline) {
			down := time.Duration((1 + 4*d.rng.Float64()) * float64(time.Minute))
			s.fault(d, FaultOffline, t, "for", down.Round(time.Second), "expect", "last will offline, then online")
			d.conn.cut(wall.Add(down))
		}
	}
	if !d.conn.openAt(wall) {
		s.stats.skipped.Add(1)
		return true
	}
	if d.fault.backhaul {
		d.fault.backhaul = false
		lost := 0
		if d.fault.lose {
			lost = len(d.pending)
			d.pending = nil
			s.stats.gwDropped.Add(int64(lost))
		}
		s.log.Info("simulated fault ended", "kind", FaultBackhaulLoss.String(), "device_id", d.spec.ID,
			"buffered", len(d.pending), "lost", lost)
	}
	if ok {
		topic := "devices/" + d.spec.ID + "/telemetry"
		if !s.send(ctx, d, t, topic, raw, false) {
			return false
		}
		if dup && !s.send(ctx, d, t, topic, raw, false) {
			return false
		}
	}
	if isGateway {
		return s.flush(ctx, d, t)
	}
	return true
}

// buffer keeps a sensor's reading for the gateway's next flush.
func (gw *simDevice) buffer(s *sim, r gwReading) {
	if len(gw.pending) >= gw.pendingCap {
		gw.pending = gw.pending[1:]
		s.stats.gwDropped.Add(1)
	}
	gw.pending = append(gw.pending, r)
}

// flush publishes a gateway's buffered readings as gateway messages, each
// within maxPerMessage readings and maxMessageBytes.
func (s *sim) flush(ctx context.Context, gw *simDevice, t time.Time) bool {
	topic := "gateways/" + gw.spec.ID + "/telemetry"
	for len(gw.pending) > 0 {
		n, size := 0, 2
		for n < len(gw.pending) && n < maxPerMessage {
			r := gw.pending[n]
			add := len(r.raw) + len(r.id) + 6
			if n > 0 && size+add > maxMessageBytes {
				break
			}
			size += add
			n++
		}
		payload := appendGateway(make([]byte, 0, size+16), gw.pending[:n], s.gwOrder)
		if !s.send(ctx, gw, t, topic, payload, true) {
			return false
		}
		gw.pending = gw.pending[n:]
	}
	gw.pending = nil // let the array go once drained
	return true
}

// send hands a message on, maybe malformed, maybe followed by an oversized
// one. It blocks while the publishers are busy: a slow broker slows the
// fleet down.
func (s *sim) send(ctx context.Context, d *simDevice, t time.Time, topic string, payload []byte, gateway bool) bool {
	var extra []byte
	if s.o.Faults && !d.spec.Multiplexer {
		if s.roll(d, FaultOversized, s.o.FaultRates.Oversized) {
			target := oversizedLimit + 1 + d.rng.IntN(16<<10)
			extra = oversize(payload, gateway, target)
			s.fault(d, FaultOversized, t, "topic", topic, "bytes", len(extra), "expect", "too_large")
		}
		if s.roll(d, FaultMalformed, s.o.FaultRates.Malformed) {
			f := malformedForms[d.rng.IntN(len(malformedForms))]
			payload = malform(payload, f.form)
			s.fault(d, FaultMalformed, t, "topic", topic, "form", f.form, "expect", f.reason)
		}
	}
	if !s.emit(ctx, pubJob{conn: d.conn, topic: topic, payload: payload, qos: s.o.QoS}) {
		return false
	}
	if extra != nil {
		return s.emit(ctx, pubJob{conn: d.conn, topic: topic, payload: extra, qos: s.o.QoS})
	}
	return true
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
		"readings", s.stats.readings.Load(),
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

// openAt reports whether the connection is up at wall time now. A
// connection without a client (tests of the scheduler) is up unless cut.
func (c *deviceConn) openAt(now time.Time) bool {
	if c.client == nil {
		return now.UnixNano() >= c.blockUntil.Load()
	}
	return c.client.IsConnectionOpen()
}

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
