package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Bounds of the publishing machinery.
const (
	// maxInflight bounds the publishes per connection whose
	// acknowledgement is outstanding; when reached the connection waits,
	// so an overloaded system pushes back on the offered rate.
	maxInflight = 1000
	// connectConcurrency bounds the MQTT connects in progress.
	connectConcurrency = 32
	// ackWait bounds the wait for outstanding acknowledgements after
	// publishing stops.
	ackWait = 30 * time.Second
	// pace is how often a connection catches up with its schedule.
	pace = 5 * time.Millisecond
	// stableFor is how long stored readings must not increase before the
	// system counts as drained (when not everything acknowledged arrived).
	stableFor = 3 * time.Second
	// pollEvery is the interval of /metrics polls while draining.
	pollEvery = 100 * time.Millisecond
)

// Result is what one run measured.
type Result struct {
	RunID       string  `json:"run_id"`
	Devices     int     `json:"devices"`
	Connections int     `json:"connections"`
	QoS         int     `json:"qos"`
	OfferedRate float64 `json:"offered_rate"` // readings/s asked for
	DurationS   float64 `json:"duration_s"`   // publishing phase as asked
	PayloadSize float64 `json:"payload_bytes"`

	// Sent readings were handed to a connection; Acknowledged got their
	// PUBACK (QoS 1) or were written to the socket (QoS 0, which has no
	// acknowledgement); PublishErrors failed or timed out.
	Sent          int64 `json:"sent"`
	Acknowledged  int64 `json:"acknowledged"`
	PublishErrors int64 `json:"publish_errors"`
	// Stored is counted in InfluxDB; Lost = Acknowledged - Stored (must be
	// 0; negative would mean more stored than acknowledged, which QoS 0
	// or a slow PUBACK can show).
	Stored int64 `json:"stored"`
	Lost   int64 `json:"lost"`
	// Counters of infrawatch's /metrics over the run.
	ReportedStored float64 `json:"reported_stored"`
	Rejected       float64 `json:"rejected"`
	Dropped        float64 `json:"dropped"`

	// SendRate is readings sent per second over the publishing phase;
	// StoredRate is readings stored per second from the first publish to
	// the moment stored readings stopped increasing; DrainS is that
	// moment's distance from the end of publishing.
	PublishS   float64 `json:"publish_s"`
	SendRate   float64 `json:"send_rate"`
	StoredRate float64 `json:"stored_rate"`
	DrainS     float64 `json:"drain_s"`
	// Publish → stored lag, from infrawatch_ingest_lag_seconds,
	// interpolated within its buckets (NaN-free: -1 when unknown).
	LagP50Ms float64 `json:"lag_p50_ms"`
	LagP99Ms float64 `json:"lag_p99_ms"`
	LagMaxMs float64 `json:"lag_max_bucket_ms"` // upper bound of the highest non-empty bucket
	// Ingest's InfluxDB writes over the run: how many, their mean size
	// in points and mean duration.
	Writes      int64   `json:"writes"`
	MeanBatch   float64 `json:"mean_batch_points"`
	MeanWriteMs float64 `json:"mean_write_ms"`

	// Processes measured over the publishing and draining phases.
	Procs map[string]ProcUsage `json:"procs"`
	// The machine over the same span: its cores, and the CPU seconds
	// that processes other than those measured used. Much other work
	// makes every figure above noisy.
	Cores           int     `json:"cores"`
	MeasuredS       float64 `json:"measured_s"`
	OtherCPUSeconds float64 `json:"other_cpu_seconds"`

	// Target is "direct" for a run without infrawatch (Telegraf): then the
	// reported counts are InfluxDB's (points written, write requests) and
	// lag is unknown (-1).
	Target string `json:"target,omitempty"`
	// WS is what the websocket clients measured (Options.WSClients > 0).
	WS *WSResult `json:"ws,omitempty"`
}

// OtherCores is the mean number of cores other processes kept busy.
func (r *Result) OtherCores() float64 {
	if r.MeasuredS <= 0 {
		return 0
	}
	return r.OtherCPUSeconds / r.MeasuredS
}

// ProcUsage is one process's CPU and memory over a run.
type ProcUsage struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUPer1000 is CPU seconds per 1,000 stored readings.
	CPUPer1000 float64 `json:"cpu_seconds_per_1000_stored"`
	// RSSBytes and PeakRSSBytes are VmRSS and VmHWM at the end (0 for the
	// load generator's own, which is not of interest).
	RSSBytes     int64 `json:"rss_bytes,omitempty"`
	PeakRSSBytes int64 `json:"peak_rss_bytes,omitempty"`
}

// ZeroLoss says every acknowledged reading was stored and nothing was
// rejected or dropped.
func (r *Result) ZeroLoss() bool {
	return r.Lost <= 0 && r.Stored >= r.Acknowledged && r.PublishErrors == 0 && r.Rejected == 0 && r.Dropped == 0
}

// Run provisions o.Devices bench devices, publishes o.Rate readings per
// second for o.Duration, waits until the system has stored what it will,
// counts the stored readings in InfluxDB and returns the measurements.
func Run(ctx context.Context, o Options) (*Result, error) {
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("bench options:\n%w", err)
	}
	if o.RunID == "" {
		id, err := randomHex(4)
		if err != nil {
			return nil, err
		}
		o.RunID = id
	}
	log := o.Logger.With("run", o.RunID)
	prefix := "bench-" + o.RunID + "-"
	ids := make([]string, o.Devices)
	for i := range ids {
		ids[i] = prefix + strconv.Itoa(i)
	}

	secrets := map[string]string{}
	if !o.Direct {
		t0 := o.Now()
		if !o.NoRules {
			if err := ensureBenchRules(ctx, o.APIURL, o.Token); err != nil {
				return nil, err
			}
			log.Info("alert rules in place", "rules", len(benchRules()))
		}
		var err error
		if secrets, err = provision(ctx, o.APIURL, o.Token, ids, 1); err != nil {
			return nil, err
		}
		log.Info("devices provisioned", "devices", len(ids), "took", o.Now().Sub(t0).Round(time.Millisecond))
	}

	conns := make([]*conn, len(ids))
	var sent map[string]*sentTimes
	if o.WSClients > 0 {
		sent = make(map[string]*sentTimes, len(ids))
	}
	for i, id := range ids {
		conns[i] = &conn{id: id, topic: "devices/" + id + "/telemetry"}
		if sent != nil {
			conns[i].sent = &sentTimes{}
			sent[id] = conns[i].sent
		}
	}
	defer disconnectAll(conns)
	if err := connectAll(ctx, o, conns, secrets); err != nil {
		return nil, err
	}
	log.Info("devices connected", "connections", len(conns))

	var ws *wsFleet
	var wsConnectS float64
	if o.WSClients > 0 {
		t0 := o.Now()
		var err error
		if ws, err = openWS(ctx, o.APIURL, o.Token, o.WSClients, o.WSSubscribe, ids, sent); err != nil {
			return nil, err
		}
		defer ws.close()
		wsConnectS = o.Now().Sub(t0).Seconds()
		log.Info("websocket clients subscribed", "clients", o.WSClients, "took", time.Duration(wsConnectS*float64(time.Second)).Round(time.Millisecond))
	}

	before, err := sample(ctx, o)
	if err != nil {
		return nil, err
	}
	cpuBefore := cpuSnapshot(o.Procs)
	busyBefore, busyErr := machineBusy()

	// Share the total over the connections, each with a random phase so
	// they do not publish in lockstep.
	total := int64(math.Round(o.Rate * o.Duration.Seconds()))
	start := o.Now()
	rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), 1))
	var wg sync.WaitGroup
	ackDeadline := make(chan struct{})
	for i, c := range conns {
		c.total = total / int64(len(conns))
		if int64(i) < total%int64(len(conns)) {
			c.total++
		}
		c.phase = rng.Float64()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.publish(ctx, o, start, ackDeadline)
		}()
	}
	stopProgress := progress(o, log, conns)
	publishDone, runDone := make(chan struct{}), make(chan struct{})
	defer close(runDone)
	var publishEnd time.Time
	go func() {
		// Publishing ends when every connection handed over its share;
		// then acknowledgements get ackWait.
		for _, c := range conns {
			<-c.handed
		}
		publishEnd = o.Now()
		close(publishDone)
		t := time.NewTimer(ackWait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-runDone:
		}
		close(ackDeadline)
	}()
	wg.Wait()
	stopProgress()
	<-publishDone
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bench run: %w", err)
	}

	r := &Result{RunID: o.RunID, Devices: o.Devices, Connections: len(conns), QoS: int(o.QoS),
		OfferedRate: o.Rate, DurationS: o.Duration.Seconds()}
	var payloadBytes int64
	for _, c := range conns {
		r.Sent += c.nSent.Load()
		r.Acknowledged += c.acked.Load()
		r.PublishErrors += c.failed.Load()
		payloadBytes += c.bytes
	}
	if r.Sent > 0 {
		r.PayloadSize = float64(payloadBytes) / float64(r.Sent)
	}
	r.PublishS = publishEnd.Sub(start).Seconds()
	if r.PublishS > 0 {
		r.SendRate = float64(r.Sent) / r.PublishS
	}
	log.Info("publishing done", "sent", r.Sent, "acknowledged", r.Acknowledged, "errors", r.PublishErrors,
		"send_rate", int(r.SendRate))

	after, lastIncrease, err := drain(ctx, o, before, r.Sent)
	if err != nil {
		return nil, err
	}
	cpuAfter := cpuSnapshot(o.Procs)
	if ws != nil {
		r.WS = ws.result(0)
		r.WS.Subscribe = o.WSSubscribe
		r.WS.ConnectS = wsConnectS
	}
	busyAfter, err := machineBusy()
	measuredEnd := o.Now()
	r.ReportedStored = after.stored - before.stored
	r.Rejected = after.rejected - before.rejected
	r.Dropped = after.dropped - before.dropped
	r.DrainS = math.Max(0, lastIncrease.Sub(publishEnd).Seconds())

	// Count in InfluxDB until two counts agree (a count is exact once the
	// writes it covers returned, which the drain waited for).
	countStart, countStop := start.Add(-time.Minute), o.Now().Add(6*time.Minute)
	var stored int64 = -1
	for i := 0; i < 5; i++ {
		n, err := countStored(ctx, o, prefix, countStart, countStop)
		if err != nil {
			return nil, err
		}
		if n == stored || n == r.Acknowledged {
			stored = n
			break
		}
		stored = n
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	r.Stored = stored
	r.Lost = r.Acknowledged - r.Stored
	if r.WS != nil {
		r.WS.Expected = int64(math.Round(float64(r.Stored) * r.WS.share))
		r.WS.Coalesced = after.coalesced - before.coalesced
		r.WS.ClientsDropped = after.wsDropped - before.wsDropped
		r.WS.SentByHub = after.wsSent - before.wsSent
	}
	if span := lastIncrease.Sub(start).Seconds(); span > 0 {
		r.StoredRate = float64(r.Stored) / span
	}

	lag := after.lag.sub(before.lag)
	r.LagP50Ms, r.LagP99Ms, r.LagMaxMs = ms(lag.quantile(0.5)), ms(lag.quantile(0.99)), ms(lag.maxBound())
	if n := after.writeCount - before.writeCount; n > 0 {
		r.Writes = int64(n)
		r.MeanWriteMs = ms((after.writeSum - before.writeSum) / n)
	}
	if n := after.batchCount - before.batchCount; n > 0 {
		r.MeanBatch = math.Round((after.batchSum-before.batchSum)/n*10) / 10
	}
	r.Procs = usage(o.Procs, cpuBefore, cpuAfter, r.Stored)
	r.Cores, r.MeasuredS = runtime.NumCPU(), measuredEnd.Sub(start).Seconds()
	if o.Direct {
		r.Target = "direct"
	}
	if busyErr == nil && err == nil {
		other := (busyAfter - busyBefore).Seconds()
		for _, u := range r.Procs {
			other -= u.CPUSeconds
		}
		r.OtherCPUSeconds = math.Max(0, math.Round(other*10)/10)
	}
	log.Info("run done", "stored", r.Stored, "lost", r.Lost, "stored_rate", int(r.StoredRate))
	return r, nil
}

// sample reads infrawatch's /metrics, or in a Direct run InfluxDB's write
// statistics as the same counters (stored points, write requests and their
// duration; batch = points per request).
func sample(ctx context.Context, o Options) (metricsSample, error) {
	if !o.Direct {
		return scrape(ctx, o.APIURL)
	}
	w, err := scrapeInfluxWrites(ctx, o.InfluxURL)
	if err != nil {
		return metricsSample{}, err
	}
	return metricsSample{received: w.points, stored: w.points, batchSum: w.points, batchCount: w.requests,
		writeSum: w.durationNs / 1e9, writeCount: w.requests}, nil
}

// drain polls /metrics until infrawatch has stored (or rejected, or
// dropped) every sent reading, or its stored count has not moved for
// stableFor, bounded by o.DrainTimeout. It returns the last sample and
// when the stored count last increased.
func drain(ctx context.Context, o Options, before metricsSample, sent int64) (metricsSample, time.Time, error) {
	deadline := o.Now().Add(o.DrainTimeout)
	last := before.stored
	lastIncrease := o.Now()
	for {
		m, err := sample(ctx, o)
		if err != nil {
			return m, lastIncrease, err
		}
		now := o.Now()
		if m.stored > last {
			last, lastIncrease = m.stored, now
		}
		accounted := (m.stored - before.stored) + (m.rejected - before.rejected) + (m.dropped - before.dropped)
		if accounted >= float64(sent) || now.Sub(lastIncrease) >= stableFor || now.After(deadline) {
			return m, lastIncrease, nil
		}
		select {
		case <-ctx.Done():
			return m, lastIncrease, fmt.Errorf("wait for the system to drain: %w", ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// maxBound is the upper bound of the highest non-empty bucket.
func (h histogram) maxBound() float64 {
	for i := len(h.counts) - 1; i >= 0; i-- {
		below := 0.0
		if i > 0 {
			below = h.counts[i-1]
		}
		if h.counts[i] > below {
			return h.bounds[i]
		}
	}
	return math.NaN()
}

func ms(sec float64) float64 {
	if math.IsNaN(sec) || math.IsInf(sec, 0) {
		return -1
	}
	return math.Round(sec*1e4) / 10
}

// cpuSnapshot reads the CPU time of procs and of this process ("loadgen").
func cpuSnapshot(procs map[string]int) map[string]time.Duration {
	m := map[string]time.Duration{"loadgen": selfCPU()}
	for name, pid := range procs {
		if d, err := procCPU(pid); err == nil {
			m[name] = d
		}
	}
	return m
}

func usage(procs map[string]int, before, after map[string]time.Duration, stored int64) map[string]ProcUsage {
	out := make(map[string]ProcUsage, len(after))
	for name, a := range after {
		b, ok := before[name]
		if !ok {
			continue
		}
		u := ProcUsage{PID: procs[name], CPUSeconds: (a - b).Seconds()}
		if name == "loadgen" {
			u.PID = 0
		}
		if stored > 0 {
			u.CPUPer1000 = u.CPUSeconds * 1000 / float64(stored)
		}
		if u.PID > 0 {
			u.RSSBytes, u.PeakRSSBytes, _ = procMemory(u.PID)
		}
		out[name] = u
	}
	return out
}

// progress logs the readings sent every 5 s until the returned stop.
func progress(o Options, log interface{ Info(string, ...any) }, conns []*conn) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			var sent, acked int64
			for _, c := range conns {
				sent += c.nSent.Load()
				acked += c.acked.Load()
			}
			log.Info("publishing", "sent", sent, "acknowledged", acked)
		}
	}()
	return func() { close(done); wg.Wait() }
}

// conn is one bench device on its own MQTT connection.
type conn struct {
	id, topic string
	// One of these is set, by Options.Publisher.
	client mqtt.Client
	raw    *rawConn

	total  int64   // readings to send
	phase  float64 // offset in [0,1) of its schedule
	lastTS int64   // ms of the last reading, so each ts is unique
	bytes  int64
	handed chan struct{} // closed when all readings were handed over

	sent *sentTimes // publish times for the websocket clients; nil without

	nSent, acked, failed atomic.Int64
}

func connectAll(ctx context.Context, o Options, conns []*conn, secrets map[string]string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, connectConcurrency)
		once     sync.Once
		firstErr error
	)
	for _, c := range conns {
		c.handed = make(chan struct{})
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
			if o.Publisher != PublisherPaho {
				var user string
				secret, ok := secrets[c.id]
				if ok {
					user = c.id
				}
				var err error
				if c.raw, err = dialRaw(ctx, o.BrokerURL, c.id, user, secret, o.QoS, &c.acked, &c.failed); err != nil {
					once.Do(func() {
						firstErr = fmt.Errorf("connect device %s to %s: %w", c.id, o.BrokerURL, err)
						cancel()
					})
				}
				return
			}
			opts := mqtt.NewClientOptions().
				AddBroker(o.BrokerURL).
				SetClientID(c.id).
				SetProtocolVersion(4).
				SetCleanSession(true).
				SetAutoReconnect(false).
				SetConnectRetry(false).
				SetOrderMatters(false).
				SetKeepAlive(30 * time.Second).
				SetConnectTimeout(10 * time.Second).
				SetWriteTimeout(10 * time.Second)
			if secret, ok := secrets[c.id]; ok {
				opts.SetUsername(c.id).SetPassword(secret)
			}
			c.client = mqtt.NewClient(opts)
			tok := c.client.Connect()
			var err error
			if !tok.WaitTimeout(15 * time.Second) {
				err = errors.New("timed out")
			} else {
				err = tok.Error()
			}
			if err != nil {
				once.Do(func() {
					firstErr = fmt.Errorf("connect device %s to %s: %w", c.id, o.BrokerURL, err)
					cancel()
				})
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func disconnectAll(conns []*conn) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, connectConcurrency)
	for _, c := range conns {
		if c.client == nil && c.raw == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if c.raw != nil {
				c.raw.close()
				return
			}
			c.client.Disconnect(250)
		}()
	}
	wg.Wait()
}

// publish sends c.total readings spread evenly over o.Duration from start,
// with at most maxInflight unacknowledged, and then waits for the
// outstanding acknowledgements until ackDeadline closes.
func (c *conn) publish(ctx context.Context, o Options, start time.Time, ackDeadline <-chan struct{}) {
	if c.raw != nil {
		c.publishRaw(ctx, o, start, ackDeadline)
		return
	}
	tokens := make(chan mqtt.Token, maxInflight)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.awaitAcks(ctx, tokens, ackDeadline)
	}()
	defer wg.Wait()
	defer close(tokens)
	defer close(c.handed)

	c.schedule(ctx, o, start, func(payload []byte) bool {
		tok := c.client.Publish(c.topic, o.QoS, false, payload)
		c.nSent.Add(1)
		select {
		case tokens <- tok:
			return true
		case <-ctx.Done():
			return false
		}
	}, nil)
}

// schedule hands send c.total readings spread evenly over o.Duration from
// start: every pace tick, the readings that have fallen due, then calls
// tickDone (when not nil). It stops early when send or tickDone returns
// false, or ctx ends. Both publishers use it, so the system under test sees
// the same arrival pattern with either.
func (c *conn) schedule(ctx context.Context, o Options, start time.Time, send func(payload []byte) bool, tickDone func() bool) {
	tick := time.NewTicker(pace)
	defer tick.Stop()
	dur := o.Duration.Seconds()
	var n int64
	for n < c.total {
		now := o.Now()
		due := min(c.total, int64(now.Sub(start).Seconds()/dur*float64(c.total)+c.phase))
		for ; n < due; n++ {
			payload, ts := c.reading(now, n)
			c.bytes += int64(len(payload))
			if c.sent != nil {
				c.sent.record(ts, o.Now())
			}
			if !send(payload) {
				return
			}
		}
		if tickDone != nil && !tickDone() {
			return
		}
		if n >= c.total {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// awaitAcks counts the outcome of each publish, in order.
func (c *conn) awaitAcks(ctx context.Context, tokens <-chan mqtt.Token, deadline <-chan struct{}) {
	for tok := range tokens {
		select {
		case <-tok.Done():
			if tok.Error() != nil {
				c.failed.Add(1)
			} else {
				c.acked.Add(1)
			}
		case <-deadline:
			c.failed.Add(1)
		case <-ctx.Done():
			c.failed.Add(1)
		}
	}
}

// reading builds one ~150-byte reading with three fields. Its ts is the
// publish time in ms, moved on by 1 ms when the previous reading of this
// device had the same, so that no two readings overwrite each other in
// InfluxDB (same series, same time).
func (c *conn) reading(now time.Time, seq int64) ([]byte, int64) {
	ts := max(now.UnixMilli(), c.lastTS+1)
	c.lastTS = ts
	b := make([]byte, 0, 160)
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"values":{"vehicle_flow_per_hour":`...)
	b = strconv.AppendFloat(b, 1000+float64(seq%1000)*0.5+0.123456, 'f', 9, 64)
	b = append(b, `,"mean_speed_km_per_hour":`...)
	b = strconv.AppendFloat(b, 40+float64(seq%400)*0.05+0.000123, 'f', 9, 64)
	b = append(b, `,"`+countField+`":`...)
	b = strconv.AppendFloat(b, float64(seq%100)+0.345678, 'f', 9, 64)
	b = append(b, "}}"...)
	return b, ts
}

// sortedNames returns the keys of m, "infrawatch" first, "loadgen" last.
func sortedNames(m map[string]ProcUsage) []string {
	rank := func(s string) int {
		switch s {
		case "infrawatch":
			return 0
		case "loadgen":
			return 2
		}
		return 1
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if rank(names[i]) != rank(names[j]) {
			return rank(names[i]) < rank(names[j])
		}
		return names[i] < names[j]
	})
	return names
}
