package alerts

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configures an Engine. Lookup is required; the rest have defaults.
type Options struct {
	// Lookup returns the registry's device for an id.
	Lookup func(id string) (*telemetry.Device, bool)
	// DevicesByGateway lists the devices whose GatewayID is gatewayID; used
	// to count the devices folded into a gateway's alert. Optional.
	DevicesByGateway func(gatewayID string) []string
	// Store persists rules, alerts and silences (default: none, nothing
	// survives a restart).
	Store     Store
	Notifiers []Notifier
	// Events receives alert_events line protocol (optional).
	Events EventWriter
	// Now is the clock for API actions and Run (default time.Now).
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer

	// TickInterval is how often Run calls Tick (default 1s).
	TickInterval time.Duration
	// FoldWait holds the notification of an offline or absence alert of a
	// device behind a gateway this long, so that if its gateway goes down
	// too (in whatever order the events arrive) the crew gets one
	// notification, not one per device (default 30s; negative: no wait).
	FoldWait time.Duration
	// OfflineSeverity and OfflineNotify apply to the built-in
	// device_offline alerts (default warning, websocket only).
	OfflineSeverity string
	OfflineNotify   Notify
	// ResolvedRetention is how many resolved alerts ListAlerts keeps in
	// memory (default 1000); older ones stay in the Store. A late reading
	// older than the one that resolved a retained alert opens no new one.
	ResolvedRetention int
	// MaxRules bounds the rule count (default 50000).
	MaxRules int
	// EventQueue bounds the alert_events lines waiting to be written
	// (default 10000); beyond it lines are dropped and counted.
	EventQueue int
	// ReorderWindow, when positive, holds each device's readings this long
	// (in reading time, or wall time when the device goes quiet) and
	// evaluates them sorted by reading time, so readings that arrive out
	// of order within the window give the same alerts as the sorted
	// stream; timers run the same amount behind. Zero evaluates each
	// reading on arrival (a reading older than the newest evaluated one is
	// then ignored). See reorder.go.
	ReorderWindow time.Duration
	// RedeliverWithin is how long a notification that its notifiers did
	// not finish (cut short by a shutdown) is sent again at the next start
	// (default 1h): past it, a page would be news of the past. See
	// notify_outbox.go.
	RedeliverWithin time.Duration
	// SilenceRetention is how long an ended silence stays listed (and
	// stored) before Run deletes it (default 24h). It stops muting when
	// it ends either way.
	SilenceRetention time.Duration
}

func (o *Options) fill() error {
	errs := map[string]string{}
	if o.Lookup == nil {
		errs["lookup"] = "required"
	}
	if o.OfflineSeverity == "" {
		o.OfflineSeverity = SeverityWarning
	}
	switch o.OfflineSeverity {
	case SeverityInfo, SeverityWarning, SeverityCritical:
	default:
		errs["offline_severity"] = "must be info, warning or critical"
	}
	if o.TickInterval < 0 || o.ResolvedRetention < 0 || o.MaxRules < 0 || o.EventQueue < 0 {
		errs["limits"] = "tick_interval, resolved_retention, max_rules and event_queue must not be negative"
	}
	if o.ReorderWindow < 0 {
		errs["reorder_window"] = "must not be negative"
	}
	if o.RedeliverWithin < 0 {
		errs["redeliver_within"] = "must not be negative"
	}
	if o.SilenceRetention < 0 {
		errs["silence_retention"] = "must not be negative"
	}
	if len(errs) > 0 {
		return &ValidationError{Fields: errs}
	}
	if o.Store == nil {
		o.Store = nopStore{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.TickInterval == 0 {
		o.TickInterval = time.Second
	}
	if o.FoldWait == 0 {
		o.FoldWait = 30 * time.Second
	}
	if o.ResolvedRetention == 0 {
		o.ResolvedRetention = 1000
	}
	if o.MaxRules == 0 {
		o.MaxRules = 50000
	}
	if o.EventQueue == 0 {
		o.EventQueue = 10000
	}
	if o.RedeliverWithin == 0 {
		o.RedeliverWithin = time.Hour
	}
	if o.SilenceRetention == 0 {
		o.SilenceRetention = 24 * time.Hour
	}
	return nil
}

type metrics struct {
	transitions   *prometheus.CounterVec
	readings      prometheus.Counter
	open          prometheus.Gauge
	subDropped    prometheus.Counter
	eventsDropped prometheus.Counter
	eventErrors   prometheus.Counter
	storeErrors   prometheus.Counter
	outboxDropped prometheus.Counter
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{}
	var err error
	if m.transitions, err = registerCounterVec(r, prometheus.CounterOpts{
		Name: "infrawatch_alerts_transitions_total", Help: "Alert transitions by kind.",
	}, "transition"); err != nil {
		return nil, err
	}
	counters := []struct {
		dst  *prometheus.Counter
		name string
		help string
	}{
		{&m.readings, "infrawatch_alerts_readings_evaluated_total", "Readings the alert engine evaluated."},
		{&m.subDropped, "infrawatch_alerts_subscriber_dropped_total", "Alert events dropped because a subscriber was slow."},
		{&m.eventsDropped, "infrawatch_alerts_event_lines_dropped_total", "alert_events lines dropped (queue full or write failed)."},
		{&m.eventErrors, "infrawatch_alerts_event_write_errors_total", "Failed writes of alert_events to InfluxDB."},
		{&m.storeErrors, "infrawatch_alerts_store_errors_total", "Failed writes of alert state to the store."},
		{&m.outboxDropped, "infrawatch_alerts_notifications_not_redelivered_total",
			"Alert notifications that will not be sent again after a restart: beyond the outbox bound, or unfinished for longer than the redelivery horizon."},
	}
	for _, c := range counters {
		if *c.dst, err = registerCounter(r, prometheus.CounterOpts{Name: c.name, Help: c.help}); err != nil {
			return nil, err
		}
	}
	m.open = prometheus.NewGauge(prometheus.GaugeOpts{Name: "infrawatch_alerts_open", Help: "Open (firing or acknowledged) alerts."})
	if err := r.Register(m.open); err != nil {
		return nil, fmt.Errorf("register infrawatch_alerts_open: %w", err)
	}
	return m, nil
}

// metricBucket maps a metric name to the rules reading it; "" holds absence
// rules on any metric.
type metricBucket map[string][]*compiled

// index finds the rules a reading may concern without scanning all rules:
// each enabled rule sits in exactly one bucket, chosen by its most specific
// selector field (device ids, then site, tag, type, domain), and a reading visits only the buckets of its device's id,
// site, type, domain and tags, then only the metrics it carries.
type index struct {
	byDevice, bySite, byType, byDomain, byTag map[string]metricBucket
	all                                       metricBucket
}

func tagKey(k, v string) string { return k + "\x00" + v }

func newIndex() *index {
	return &index{
		byDevice: map[string]metricBucket{}, bySite: map[string]metricBucket{}, byType: map[string]metricBucket{},
		byDomain: map[string]metricBucket{}, byTag: map[string]metricBucket{}, all: metricBucket{},
	}
}

// buckets calls fn with the map and key of each bucket c belongs in (the
// catch-all bucket has a nil map).
func (ix *index) buckets(c *compiled, fn func(m map[string]metricBucket, key string)) {
	sel := c.Selector
	switch {
	case len(sel.DeviceIDs) > 0:
		for _, id := range sel.DeviceIDs {
			fn(ix.byDevice, id)
		}
	case sel.Site != "":
		fn(ix.bySite, sel.Site)
	case len(sel.Tags) > 0:
		keys := make([]string, 0, len(sel.Tags))
		for k := range sel.Tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fn(ix.byTag, tagKey(keys[0], sel.Tags[keys[0]]))
	case sel.Type != "":
		fn(ix.byType, sel.Type)
	case sel.Domain != "":
		fn(ix.byDomain, sel.Domain)
	default:
		fn(nil, "")
	}
}

func (ix *index) add(c *compiled) {
	if !c.Enabled {
		return
	}
	ix.buckets(c, func(m map[string]metricBucket, key string) {
		b := ix.all
		if m != nil {
			if b = m[key]; b == nil {
				b = metricBucket{}
				m[key] = b
			}
		}
		b[c.Metric] = append(b[c.Metric], c)
	})
}

func (ix *index) remove(c *compiled) {
	ix.buckets(c, func(m map[string]metricBucket, key string) {
		b := ix.all
		if m != nil {
			if b = m[key]; b == nil {
				return
			}
		}
		rs := b[c.Metric]
		for i, x := range rs {
			if x.ID == c.ID {
				// Copy, not in place: a slice taken before stays intact.
				rs = append(append([]*compiled(nil), rs[:i]...), rs[i+1:]...)
				break
			}
		}
		if len(rs) == 0 {
			delete(b, c.Metric)
		} else {
			b[c.Metric] = rs
		}
		if m != nil && len(b) == 0 {
			delete(m, key)
		}
	})
}

// Engine evaluates alert rules on readings and device status, keeps one
// alert per (rule, device) while it is open, and hands transitions to the
// notifiers, the subscribers, InfluxDB and the store. All alert state is
// guarded by one mutex; nothing under it blocks on I/O.
type Engine struct {
	o       Options
	log     *slog.Logger
	m       *metrics
	offline *compiled

	ruleMu sync.Mutex // serialises rule and silence changes (store, then memory)

	mu       sync.Mutex
	rules    map[string]*compiled
	idx      *index
	series   map[string]map[string]*series // rule id → device id → series
	open     map[string]*series            // alert id → series, pending and open
	byDevice map[string]map[string]*series // device id → alert id → series, open only
	resolved []Alert                       // newest last, at most ResolvedRetention

	// resolvedThrough holds, for each (rule, device) with a retained
	// resolved alert that a reading resolved, the newest such reading's
	// time: see lateReading.
	resolvedThrough map[seriesKey]resolvedMark

	silences map[string]Silence
	timers   timerHeap
	// clockAt is the engine's clock (the one Tick's timers run on) for the
	// readings being evaluated: see series.heardAt.
	clockAt time.Time
	// nextSweep is when Tick next runs sweepDevices.
	nextSweep time.Time
	held      map[string]*heldReadings // device id → readings waiting for order (ReorderWindow)
	// spareVals are released readings' Values slices, for the next held
	// copies (see heldReadings).
	spareVals [][]telemetry.Value

	dirtyMu sync.Mutex
	dirty   map[string]*Alert // alert id → newest snapshot; nil = delete
	outbox  *outbox           // notifications not yet delivered
	// nextPrune is when Run next gives up outbox entries past
	// RedeliverWithin and deletes silences past SilenceRetention.
	nextPrune time.Time
	flushMu   sync.Mutex
	wake      chan struct{}

	events chan []byte

	subMu  sync.Mutex
	subs   map[int]chan Event
	subSeq int
}

// NewEngine loads rules, open and pending alerts and silences from the
// Store and rebuilds the timers, so `for` and absence clocks continue.
func NewEngine(ctx context.Context, o Options) (*Engine, error) {
	if err := o.fill(); err != nil {
		return nil, fmt.Errorf("alerts engine: %w", err)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	offline, err := compileTrusted(Rule{
		ID: OfflineRuleID, Name: "Device offline", Enabled: true, Kind: "offline",
		Severity: o.OfflineSeverity, Notify: o.OfflineNotify,
		Message: "{{.DeviceID}} ({{.Site}}) is offline",
	})
	if err != nil {
		return nil, err
	}
	e := &Engine{
		o: o, log: o.Logger, m: m, offline: offline,
		rules: map[string]*compiled{}, series: map[string]map[string]*series{},
		open: map[string]*series{}, byDevice: map[string]map[string]*series{},
		silences: map[string]Silence{}, dirty: map[string]*Alert{}, held: map[string]*heldReadings{},
		wake: make(chan struct{}, 1), events: make(chan []byte, o.EventQueue),
		subs: map[int]chan Event{}, resolvedThrough: map[seriesKey]resolvedMark{},
		outbox: newOutbox(),
	}
	rules, err := o.Store.LoadRules(ctx)
	if err != nil {
		return nil, fmt.Errorf("alerts engine: %w", err)
	}
	for _, r := range rules {
		c, err := compile(r)
		if err != nil {
			// A rule that no longer validates is kept out of evaluation but
			// not deleted: an operator can still see and fix it.
			e.log.Error("stored alert rule is invalid; not evaluated", "rule_id", r.ID, "err", err)
			r.Enabled = false
			if c, err = compileTrusted(r); err != nil {
				continue
			}
		}
		e.rules[r.ID] = c
	}
	e.idx = newIndex()
	for _, c := range e.rules {
		e.idx.add(c)
	}
	sils, err := o.Store.LoadSilences(ctx)
	if err != nil {
		return nil, fmt.Errorf("alerts engine: %w", err)
	}
	for _, s := range sils {
		e.silences[s.ID] = s
	}
	resolved, err := o.Store.LoadResolvedAlerts(ctx, o.ResolvedRetention)
	if err != nil {
		return nil, fmt.Errorf("alerts engine: %w", err)
	}
	for i := len(resolved) - 1; i >= 0; i-- {
		e.keepResolved(resolved[i])
	}
	openAlerts, err := o.Store.LoadOpenAlerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("alerts engine: %w", err)
	}
	now := o.Now()
	for i := range openAlerts {
		e.restore(openAlerts[i], now)
	}
	deliveries, err := o.Store.LoadDeliveries(ctx)
	if err != nil {
		return nil, fmt.Errorf("alerts engine: %w", err)
	}
	e.loadOutbox(deliveries, now)
	e.m.open.Set(float64(e.openCount()))
	return e, nil
}

// restore rebuilds the series of one stored alert.
func (e *Engine) restore(a Alert, now time.Time) {
	c := e.ruleByID(a.RuleID)
	if c == nil {
		return
	}
	s := e.seriesFor(a.RuleID, a.DeviceID)
	if s.alert != nil {
		return // a duplicate row; the first one wins
	}
	al := a
	s.alert = &al
	s.activeAt = a.StartsAt
	switch a.State {
	case StatePending:
		s.phase = phasePending
		s.lastT = a.StartsAt
		s.lastV = a.Value
	case StateFiring, StateAcknowledged:
		s.phase = phaseOpen
		e.addByDevice(s)
		if c.Kind == KindAbsence {
			s.lastSeen = a.StartsAt
		}
		if a.State == StateAcknowledged && c.ReackAfter > 0 {
			last := a.LastNotifiedAt
			if a.AckedAt != nil && a.AckedAt.After(last) {
				last = *a.AckedAt
			}
			s.reackAt = last.Add(c.ReackAfter.D())
		}
		if a.State == StateFiring && a.LastNotifiedAt.IsZero() && !a.Silenced && a.SuppressedBy == "" {
			s.foldAt = now // its notification was still held: decide at the next Tick
		}
	default:
		return
	}
	e.open[a.ID] = s
	e.timers.schedule(s, s.nextDue(c))
}

func (e *Engine) ruleByID(id string) *compiled {
	if id == OfflineRuleID {
		return e.offline
	}
	return e.rules[id]
}

func (e *Engine) seriesFor(ruleID, deviceID string) *series {
	m := e.series[ruleID]
	if m == nil {
		m = map[string]*series{}
		e.series[ruleID] = m
	}
	s := m[deviceID]
	if s == nil {
		s = &series{rule: ruleID, device: deviceID, hidx: -1}
		m[deviceID] = s
	}
	return s
}

func (e *Engine) dropSeries(s *series) {
	e.timers.schedule(s, time.Time{})
	if m := e.series[s.rule]; m != nil {
		delete(m, s.device)
		if len(m) == 0 {
			delete(e.series, s.rule)
		}
	}
}

func (e *Engine) addByDevice(s *series) {
	m := e.byDevice[s.device]
	if m == nil {
		m = map[string]*series{}
		e.byDevice[s.device] = m
	}
	m[s.alert.ID] = s
}

func (e *Engine) removeByDevice(s *series) {
	if m := e.byDevice[s.device]; m != nil {
		delete(m, s.alert.ID)
		if len(m) == 0 {
			delete(e.byDevice, s.device)
		}
	}
}

func (e *Engine) openCount() int {
	n := 0
	for _, m := range e.byDevice {
		n += len(m)
	}
	return n
}

// Consume evaluates readings by their own time. It takes the engine's lock
// for in-memory work only: notifications, events and persistence are
// queued, never waited for.
func (e *Engine) Consume(readings []telemetry.Reading) {
	now := e.o.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clockAt = now.Add(-e.o.ReorderWindow)
	if e.o.ReorderWindow > 0 {
		e.consumeOrdered(readings, now)
	} else {
		for i := range readings {
			e.evaluate(&readings[i])
		}
	}
	e.m.readings.Add(float64(len(readings)))
}

// evaluate runs one reading through every rule that selects its device.
// Caller holds e.mu.
func (e *Engine) evaluate(r *telemetry.Reading) {
	idx := e.idx
	dev, ok := e.o.Lookup(r.DeviceID)
	if !ok || dev == nil || dev.Lifecycle == telemetry.LifecycleRetired {
		return
	}
	e.visit(idx.byDevice[dev.ID], dev, r)
	if dev.Site != "" {
		e.visit(idx.bySite[dev.Site], dev, r)
	}
	if dev.Type != "" {
		e.visit(idx.byType[dev.Type], dev, r)
	}
	if dev.Domain != "" {
		e.visit(idx.byDomain[dev.Domain], dev, r)
	}
	if len(idx.byTag) > 0 {
		for k, v := range dev.Tags {
			e.visit(idx.byTag[tagKey(k, v)], dev, r)
		}
	}
	e.visit(idx.all, dev, r)
}

func (e *Engine) visit(b metricBucket, dev *telemetry.Device, r *telemetry.Reading) {
	if len(b) == 0 {
		return
	}
	for _, c := range b[""] {
		if c.Selector.Matches(dev) {
			e.evalAbsence(c, dev, r.Time)
		}
	}
	for _, v := range r.Values {
		for _, c := range b[v.Name] {
			if !c.Selector.Matches(dev) {
				continue
			}
			switch c.Kind {
			case KindThreshold:
				e.evalThreshold(c, dev, r.Time, v.Float())
			case KindRate:
				e.evalRate(c, dev, r.Time, v.Float())
			case KindAbsence:
				e.evalAbsence(c, dev, r.Time)
			}
		}
	}
}

func (e *Engine) evalThreshold(c *compiled, dev *telemetry.Device, t time.Time, v float64) {
	s := e.series[c.ID][dev.ID]
	if s == nil {
		// Fast path: a healthy value with no alert keeps no state.
		if !c.bad(v) || e.lateReading(c.ID, dev.ID, t) {
			return
		}
		s = e.seriesFor(c.ID, dev.ID)
	}
	e.apply(observe(s, c, t, v), s, c, dev, t, v)
	if s.phase == phaseIdle && s.foldAt.IsZero() {
		e.dropSeries(s)
	}
}

func (e *Engine) evalRate(c *compiled, dev *telemetry.Device, t time.Time, v float64) {
	s := e.series[c.ID][dev.ID]
	if s == nil {
		// A rate series lives as long as its rule, so this is a first
		// reading since start-up (or since the rule changed): carry over
		// what a resolved alert says was already evaluated, so that a
		// redelivered backlog cannot open its alert again (lateReading).
		s = e.seriesFor(c.ID, dev.ID)
		s.lastT = e.resolvedThrough[seriesKey{c.ID, dev.ID}].at
	}
	rate, ok := s.rate(t, v)
	if !ok {
		return
	}
	e.apply(observe(s, c, t, rate), s, c, dev, t, rate)
}

func (e *Engine) evalAbsence(c *compiled, dev *telemetry.Device, t time.Time) {
	s := e.seriesFor(c.ID, dev.ID)
	if e.clockAt.After(s.heardAt) {
		s.heardAt = e.clockAt
	}
	out := seen(s, t)
	e.apply(out, s, c, dev, t, 0)
	if out == noChange {
		e.timers.schedule(s, s.nextDue(c))
	}
}

// apply carries out what the state machine decided: the alert record,
// persistence, notifications, events and timers.
func (e *Engine) apply(out outcome, s *series, c *compiled, dev *telemetry.Device, t time.Time, v float64) {
	switch out {
	case noChange:
		return
	case toPending:
		s.heardAt = e.clockAt
		s.alert = e.newAlert(c, dev, s, v)
		s.alert.State = StatePending
		e.open[s.alert.ID] = s
		e.markDirty(s.alert)
	case pendingDropped:
		delete(e.open, s.alert.ID)
		e.markDeleted(s.alert.ID)
		s.alert = nil
	case toFiring:
		e.fire(s, c, dev, t, v)
	case toResolved:
		e.resolve(s, c, t, "", "")
	}
	e.timers.schedule(s, s.nextDue(c))
}

func (e *Engine) newAlert(c *compiled, dev *telemetry.Device, s *series, v float64) *Alert {
	a := &Alert{
		ID: newID("a-"), RuleID: c.ID, DeviceID: s.device, Metric: c.Metric,
		Severity: c.Severity, Value: v, StartsAt: s.activeAt,
	}
	if dev != nil {
		a.Site = dev.Site
	}
	return a
}

// foldable alerts say "this device is not reporting": the ones a gateway
// outage explains.
func (c *compiled) foldable() bool { return c.ID == OfflineRuleID || c.Kind == KindAbsence }

// gatewayDown returns the id of an open offline or absence alert of the
// gateway, or "".
func (e *Engine) gatewayDown(gw string) string {
	for id, s := range e.byDevice[gw] {
		if c := e.ruleByID(s.rule); c != nil && c.foldable() {
			return id
		}
	}
	return ""
}

func (e *Engine) silenced(dev *telemetry.Device, t time.Time) bool {
	if dev != nil && dev.Lifecycle == telemetry.LifecycleMaintenance {
		return true
	}
	for _, sl := range e.silences {
		if sl.activeAt(t, dev) {
			return true
		}
	}
	return false
}

func (e *Engine) fire(s *series, c *compiled, dev *telemetry.Device, t time.Time, v float64) {
	if s.alert == nil {
		s.alert = e.newAlert(c, dev, s, v)
	}
	a := s.alert
	a.State = StateFiring
	a.FiredAt = t
	a.Value = v
	if dev != nil {
		a.Site = dev.Site
	}
	a.Message = c.message(dev, s.device, c.Metric, v)
	a.Silenced = e.silenced(dev, t)
	e.open[a.ID] = s
	e.addByDevice(s)
	e.m.open.Set(float64(e.openCount()))

	affected := 0
	notify := !a.Silenced
	if c.foldable() && dev != nil {
		if dev.GatewayID != "" {
			if gw := e.gatewayDown(dev.GatewayID); gw != "" {
				a.SuppressedBy = gw
				notify = false
			} else if notify && e.o.FoldWait > 0 {
				s.foldAt = t.Add(e.o.FoldWait)
				notify = false
			}
		}
		affected = e.foldChildren(dev.ID, a.ID)
	}
	if notify {
		e.notify(s, c, TransitionFiring, t, affected)
	}
	e.transition(a, TransitionFiring, t)
}

// foldChildren marks the not yet notified offline and absence alerts of
// devices behind gateway gw as suppressed by gwAlert, and returns how many
// devices the gateway's alert stands for.
func (e *Engine) foldChildren(gw, gwAlert string) int {
	fold := func(s *series) {
		a := s.alert
		if a == nil || !a.State.open() || a.SuppressedBy != "" || s.foldAt.IsZero() {
			return
		}
		c := e.ruleByID(s.rule)
		if c == nil || !c.foldable() {
			return
		}
		a.SuppressedBy = gwAlert
		s.foldAt = time.Time{}
		e.timers.schedule(s, s.nextDue(c))
		e.markDirty(a)
	}
	if e.o.DevicesByGateway != nil {
		kids := e.o.DevicesByGateway(gw)
		for _, kid := range kids {
			for _, s := range e.byDevice[kid] {
				fold(s)
			}
		}
		return len(kids)
	}
	// Without the registry's list, scan the open alerts (few compared
	// with readings) for devices behind gw.
	n := 0
	for _, s := range e.open {
		if s.alert.State.open() && s.alert.SuppressedBy == "" && !s.foldAt.IsZero() {
			if dev, ok := e.o.Lookup(s.device); ok && dev.GatewayID == gw {
				fold(s)
			}
		}
		if s.alert.SuppressedBy == gwAlert {
			n++
		}
	}
	return n
}

// releaseChildren runs when a gateway's down alert resolves: its folded
// alerts are notified after FoldWait if they are still open then, or moved
// to another down alert of the same gateway.
func (e *Engine) releaseChildren(gwDevice, gwAlert string, t time.Time) {
	other := e.gatewayDown(gwDevice)
	for _, s := range e.open {
		a := s.alert
		if a.SuppressedBy != gwAlert {
			continue
		}
		a.SuppressedBy = other
		if other == "" {
			s.foldAt = t.Add(max(e.o.FoldWait, 0))
			e.timers.schedule(s, s.nextDue(e.ruleByID(s.rule)))
		}
		e.markDirty(a)
	}
}

func (e *Engine) resolve(s *series, c *compiled, t time.Time, who, note string) {
	a := s.alert
	wasNotified := !a.LastNotifiedAt.IsZero() && !a.Silenced && a.SuppressedBy == ""
	a.State = StateResolved
	rt := t
	a.ResolvedAt = &rt
	a.ResolvedBy, a.ResolveNote = who, note
	s.phase = phaseIdle
	s.foldAt, s.reackAt = time.Time{}, time.Time{}
	delete(e.open, a.ID)
	e.removeByDevice(s)
	e.m.open.Set(float64(e.openCount()))
	if wasNotified {
		e.notify(s, c, TransitionResolved, t, 0)
	}
	e.transition(a, TransitionResolved, t)
	e.keepResolved(a.clone())
	s.alert = nil
	if c.foldable() {
		e.releaseChildren(s.device, a.ID, t)
	}
}

// seriesKey names one (rule, device) series.
type seriesKey struct{ rule, device string }

// resolvedMark is what resolvedThrough keeps of the retained resolved
// alerts of one series that readings resolved: the newest resolving
// reading's time, and how many such alerts are retained.
type resolvedMark struct {
	at time.Time
	n  int
}

// keepResolved adds a resolved alert to the retained ones (at most
// ResolvedRetention, oldest out first) and keeps resolvedThrough in step:
// it remembers only what the list retains, which is also what a restart
// loads back from the Store, so it is bounded and the same in both lives.
func (e *Engine) keepResolved(a Alert) {
	e.resolved = append(e.resolved, a)
	e.markResolved(&a, 1)
	if over := len(e.resolved) - e.o.ResolvedRetention; over > 0 {
		for i := range e.resolved[:over] {
			e.markResolved(&e.resolved[i], -1)
		}
		e.resolved = append(e.resolved[:0], e.resolved[over:]...)
	}
}

// markResolved counts resolved alert a in (delta 1) or out (-1) of
// resolvedThrough. Only alerts that a reading resolved count: their
// ResolvedAt is that reading's time. By hand or by "system" it is the wall
// clock, which says nothing about which readings were evaluated.
func (e *Engine) markResolved(a *Alert, delta int) {
	if a.ResolvedBy != "" || a.ResolvedAt == nil {
		return
	}
	k := seriesKey{a.RuleID, a.DeviceID}
	m := e.resolvedThrough[k]
	m.n += delta
	if m.n <= 0 {
		delete(e.resolvedThrough, k)
		return
	}
	// A series' resolves come in reading-time order (a later alert fires
	// only on a reading not older than the last resolve), so the alerts
	// counted out first are the oldest and the newest time stays.
	if delta > 0 && a.ResolvedAt.After(m.at) {
		m.at = *a.ResolvedAt
	}
	e.resolvedThrough[k] = m
}

// lateReading reports whether a reading at t of a value series that keeps
// no state (idle threshold series are dropped) is older than the reading
// that resolved its last alert: observe ignores readings older than the
// newest one evaluated, and this is that rule for a series that is gone.
// Without it a late or redelivered bad reading (QoS 1 after a reconnect or
// a restart, a device's buffer) opens a second alert for a condition that
// is already over. Only the idle-to-bad path asks, so healthy readings pay
// nothing.
func (e *Engine) lateReading(ruleID, deviceID string, t time.Time) bool {
	m, ok := e.resolvedThrough[seriesKey{ruleID, deviceID}]
	return ok && t.Before(m.at)
}

// notify hands the alert to every notifier (they queue; none blocks),
// recorded in the outbox so that what a shutdown cuts short is sent again.
func (e *Engine) notify(s *series, c *compiled, transition string, t time.Time, affected int) {
	a := s.alert
	a.LastNotifiedAt = t
	n := Notification{
		Transition: transition, Alert: a.clone(), RuleName: c.Name,
		Webhooks: c.Notify.Webhooks, MQTT: c.Notify.MQTT, Affected: affected,
	}
	n.Key = deliveryID(n)
	e.track(&n, e.o.Now())
	for _, nt := range e.o.Notifiers {
		nt.Notify(n)
	}
	e.m.transitions.WithLabelValues("notified_" + transition).Inc()
}

// transition records a state change: store, subscribers, alert_events.
func (e *Engine) transition(a *Alert, transition string, t time.Time) {
	e.m.transitions.WithLabelValues(transition).Inc()
	e.markDirty(a)
	e.publish(Event{Kind: "alert", Alert: a.clone(), Transition: transition})
	if e.o.Events != nil {
		line := eventLine(nil, a, transition, t)
		select {
		case e.events <- line:
		default:
			e.m.eventsDropped.Inc()
		}
	}
}

func (e *Engine) markDirty(a *Alert) {
	c := a.clone()
	e.dirtyMu.Lock()
	e.dirty[a.ID] = &c
	e.dirtyMu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) markDeleted(id string) {
	e.dirtyMu.Lock()
	e.dirty[id] = nil
	e.dirtyMu.Unlock()
}

// Flush writes pending alert changes to the Store. Run calls it; API
// actions call it before they answer; a caller may call it on shutdown.
func (e *Engine) Flush(ctx context.Context) error {
	e.flushMu.Lock()
	defer e.flushMu.Unlock()
	e.dirtyMu.Lock()
	batch := e.dirty
	e.dirty = map[string]*Alert{}
	e.dirtyMu.Unlock()
	// The outbox is taken after the alerts (notify tracks before it marks
	// the alert dirty, so every notification of an alert in batch is in
	// it) and written before them: a crash in between may then send a
	// notification again, never lose one.
	if keys, save, del := e.outbox.batch(); keys != nil {
		if err := e.o.Store.SaveDeliveries(ctx, save, del); err != nil {
			e.m.storeErrors.Inc()
			e.outbox.putBack(keys)
			e.putBack(batch)
			return fmt.Errorf("persist %d alert notification changes: %w", len(keys), err)
		}
	}
	if len(batch) == 0 {
		return nil
	}
	var save []Alert
	var del []string
	for id, a := range batch {
		if a == nil {
			del = append(del, id)
		} else {
			save = append(save, *a)
		}
	}
	if err := e.o.Store.SaveAlerts(ctx, save, del); err != nil {
		e.m.storeErrors.Inc()
		e.putBack(batch)
		return fmt.Errorf("persist %d alert changes: %w", len(batch), err)
	}
	return nil
}

// putBack returns a batch that failed to persist to the dirty set, except
// what a newer change replaced, to try again.
func (e *Engine) putBack(batch map[string]*Alert) {
	e.dirtyMu.Lock()
	for id, a := range batch {
		if _, newer := e.dirty[id]; !newer {
			e.dirty[id] = a
		}
	}
	e.dirtyMu.Unlock()
}

// DeviceStatus raises the built-in device_offline alert when a device goes
// offline and resolves it when the device is back online.
func (e *Engine) DeviceStatus(ev telemetry.StatusEvent) {
	dev, ok := e.o.Lookup(ev.DeviceID)
	if !ok || dev.Lifecycle == telemetry.LifecycleRetired {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.offline
	s := e.series[OfflineRuleID][ev.DeviceID]
	switch ev.Status {
	case telemetry.StatusOffline:
		if s != nil && s.phase == phaseOpen {
			return
		}
		s = e.seriesFor(OfflineRuleID, ev.DeviceID)
		s.phase, s.activeAt = phaseOpen, ev.Time
		e.fire(s, c, dev, ev.Time, 0)
		e.timers.schedule(s, s.nextDue(c))
	case telemetry.StatusOnline:
		if s == nil || s.phase != phaseOpen {
			return
		}
		e.resolve(s, c, ev.Time, "", "")
		e.dropSeries(s)
	}
}

// Tick advances time-driven transitions to now: pending alerts whose `for`
// elapsed, absence deadlines, held notifications (dependency folding) and
// re-notification of acknowledged alerts. Only due timers are touched, and
// postponed ones once they reach the top of the heap (timerHeap.schedule).
func (e *Engine) Tick(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.o.ReorderWindow > 0 {
		e.clockAt = now.Add(-e.o.ReorderWindow)
		e.releaseQuiet(now)
		// The engine's clock runs ReorderWindow behind, so that a timer
		// never fires past a reading still held for ordering.
		now = now.Add(-e.o.ReorderWindow)
	}
	if !now.Before(e.nextSweep) {
		e.sweepDevices(now)
		e.nextSweep = now.Add(sweepEvery)
	}
	for len(e.timers) > 0 && !e.timers[0].due.After(now) {
		s := e.timers[0]
		c := e.ruleByID(s.rule)
		if c == nil {
			e.dropSeries(s)
			continue
		}
		if !e.expireSeries(s, c, now) {
			continue // dropped
		}
		due := s.nextDue(c)
		if !due.IsZero() && !due.After(now) {
			// Defensive: never spin on a deadline that cannot advance.
			due = now.Add(time.Second)
		}
		e.timers.move(s, due)
		if s.phase == phaseIdle && s.alert == nil && c.Kind == KindThreshold {
			e.dropSeries(s)
		}
	}
}

// unselected says why rule c no longer concerns device id (found by
// Lookup as dev, ok), or "" when it still does.
func unselected(c *compiled, dev *telemetry.Device, ok bool) string {
	switch {
	case !ok || dev.Lifecycle == telemetry.LifecycleRetired:
		return "device removed"
	case !c.Selector.Matches(dev):
		return "device no longer selected"
	}
	return ""
}

// sweepEvery is how often (engine time) Tick runs sweepDevices: it looks up
// every device with an open alert, and a fleet-wide outage opens one per
// device.
const sweepEvery = 10 * time.Second

// sweepDevices ends the open alerts of devices that left the registry,
// were retired, or that their rule no longer selects (the device changed),
// and notifies silenced ones whose silence is over.
// No reading of such a device reaches the rule again, and an open
// threshold or rate alert has no timer that would meet it: it would stay
// open for good. Pending and absence series meet the same check in
// expireSeries. Caller holds e.mu.
func (e *Engine) sweepDevices(now time.Time) {
	for id, m := range e.byDevice {
		dev, ok := e.o.Lookup(id)
		for _, s := range m {
			c := e.ruleByID(s.rule)
			if c == nil {
				continue
			}
			if why := unselected(c, dev, ok); why != "" {
				e.endSeries(s, c, now, why)
				continue
			}
			if a := s.alert; a.SuppressedBy != "" && !e.foldedInto(a.SuppressedBy, dev.GatewayID) {
				// Folded into a gateway the device is no longer behind
				// (reassigned, or taken off it): that outage no longer
				// explains this one. Fold it into its new gateway's if
				// that is down, else notify it through the folding wait.
				a.SuppressedBy = e.gatewayDown(dev.GatewayID)
				if dev.GatewayID == "" || a.SuppressedBy == "" {
					a.SuppressedBy = ""
					s.foldAt = now
					e.timers.schedule(s, s.nextDue(c))
				}
				e.markDirty(a)
			}
			if a := s.alert; a.Silenced && a.State == StateFiring && a.LastNotifiedAt.IsZero() && !e.silenced(dev, now) {
				// A silence mutes only while it lasts: its alerts still
				// firing when it ends (or is deleted, or the device leaves
				// maintenance) are notified now, through the folding wait's
				// path so that a gateway outage still pages once.
				a.Silenced = false
				s.foldAt = now
				e.timers.schedule(s, s.nextDue(c))
				e.markDirty(a)
			}
		}
	}
}

// foldedInto reports whether gwAlert is an open alert of gateway gw.
func (e *Engine) foldedInto(gwAlert, gw string) bool {
	s, ok := e.open[gwAlert]
	return ok && gw != "" && s.device == gw
}

// expireSeries runs the due timers of s; false when s was dropped.
func (e *Engine) expireSeries(s *series, c *compiled, now time.Time) bool {
	dev, ok := e.o.Lookup(s.device)
	if why := unselected(c, dev, ok); why != "" {
		// End what it had open: no reading will.
		e.endSeries(s, c, now, why)
		return false
	}
	switch expire(s, c, now) {
	case toFiring:
		v := s.lastV
		if c.Kind == KindAbsence {
			v = now.Sub(s.lastSeen).Seconds()
		}
		e.fire(s, c, dev, now, v)
	}
	a := s.alert
	if a == nil || !a.State.open() {
		return true
	}
	if !s.foldAt.IsZero() && !now.Before(s.foldAt) {
		s.foldAt = time.Time{}
		if a.State.open() && !a.Silenced && a.SuppressedBy == "" && a.LastNotifiedAt.IsZero() {
			if gw := e.gatewayDown(dev.GatewayID); dev.GatewayID != "" && gw != "" {
				a.SuppressedBy = gw
				e.markDirty(a)
			} else {
				e.notify(s, c, TransitionFiring, now, e.foldChildren(dev.ID, a.ID))
				e.markDirty(a)
			}
		}
	}
	if !s.reackAt.IsZero() && !now.Before(s.reackAt) {
		s.reackAt = time.Time{}
		if a.State == StateAcknowledged && c.ReackAfter > 0 {
			if !a.Silenced && a.SuppressedBy == "" {
				e.notify(s, c, TransitionRenotify, now, 0)
				e.m.transitions.WithLabelValues(TransitionRenotify).Inc()
				e.publish(Event{Kind: "alert", Alert: a.clone(), Transition: TransitionRenotify})
				e.markDirty(a)
			}
			s.reackAt = now.Add(c.ReackAfter.D())
		}
	}
	return true
}

// Run calls Tick every TickInterval, persists alert changes and writes
// alert_events until ctx ends, then flushes what is left.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.o.TickInterval)
	defer t.Stop()
	e.redeliver()
	for {
		select {
		case <-ctx.Done():
			// Readings held for ordering are evaluated, not dropped.
			e.mu.Lock()
			e.clockAt = e.o.Now().Add(-e.o.ReorderWindow)
			e.releaseAll()
			e.mu.Unlock()
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := e.Flush(fctx); err != nil {
				e.log.Error("persist alerts at shutdown", "err", err)
			}
			e.writeEvents(fctx)
			cancel()
			return
		case <-t.C:
			now := e.o.Now()
			e.Tick(now)
			if !now.Before(e.nextPrune) {
				e.pruneOutbox(now)
				e.pruneSilences(ctx, now)
				e.nextPrune = now.Add(time.Minute)
			}
			e.writeEvents(ctx)
			if err := e.Flush(ctx); err != nil {
				e.log.Error("persist alerts", "err", err)
			}
		case <-e.wake:
			if err := e.Flush(ctx); err != nil {
				e.log.Error("persist alerts", "err", err)
			}
		}
	}
}

// writeEvents drains queued alert_events lines into one write.
func (e *Engine) writeEvents(ctx context.Context) {
	if e.o.Events == nil {
		return
	}
	var buf []byte
	n := 0
	for n < 5000 {
		select {
		case l := <-e.events:
			buf = append(buf, l...)
			n++
			continue
		default:
		}
		break
	}
	if n == 0 {
		return
	}
	if err := e.o.Events.WriteLines(ctx, buf, n); err != nil {
		// alert_events is for graphs; the store is the record. Drop and
		// count rather than hold up evaluation.
		e.m.eventErrors.Inc()
		e.m.eventsDropped.Add(float64(n))
		e.log.Warn("write alert_events", "lines", n, "err", err)
	}
}

// Subscribe returns a channel of alert events (buffered buf, at least 1)
// and a cancel func. A subscriber that falls behind loses events (counted);
// it never slows evaluation.
func (e *Engine) Subscribe(buf int) (<-chan Event, func()) {
	ch := make(chan Event, max(buf, 1))
	e.subMu.Lock()
	e.subSeq++
	id := e.subSeq
	e.subs[id] = ch
	e.subMu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			e.subMu.Lock()
			delete(e.subs, id)
			e.subMu.Unlock()
			close(ch)
		})
	}
}

func (e *Engine) publish(ev Event) {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	for _, ch := range e.subs {
		select {
		case ch <- ev:
		default:
			e.m.subDropped.Inc()
		}
	}
}

// ---- rules ----

// CreateRule validates r (defaults filled: severity warning), gives it an
// id if it has none, stores it and starts evaluating it.
func (e *Engine) CreateRule(ctx context.Context, r Rule) (Rule, error) {
	r = r.withDefaults()
	if r.ID == "" {
		r.ID = newID("r-")
	}
	c, err := compile(r)
	if err != nil {
		return Rule{}, err
	}
	e.ruleMu.Lock()
	defer e.ruleMu.Unlock()
	err = e.storeThenApply("create rule "+r.ID, func() error {
		if _, exists := e.rules[r.ID]; exists {
			return fmt.Errorf("create rule %s: %w: id exists", r.ID, ErrConflict)
		}
		if len(e.rules) >= e.o.MaxRules {
			return fmt.Errorf("create rule: %w: at most %d rules", ErrConflict, e.o.MaxRules)
		}
		return nil
	}, func() error {
		return e.o.Store.SaveRule(ctx, r)
	}, func() {
		e.rules[r.ID] = c
		e.idx.add(c)
	})
	if err != nil {
		return Rule{}, err
	}
	return r, nil
}

// GetRule returns a rule; the built-in device_offline rule included.
func (e *Engine) GetRule(_ context.Context, id string) (Rule, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.ruleByID(id)
	if c == nil {
		return Rule{}, fmt.Errorf("rule %s: %w", id, ErrNotFound)
	}
	return c.Rule, nil
}

// ListRules returns the operators' rules sorted by name, then id.
func (e *Engine) ListRules(_ context.Context) []Rule {
	e.mu.Lock()
	out := make([]Rule, 0, len(e.rules))
	for _, c := range e.rules {
		out = append(out, c.Rule)
	}
	e.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// UpdateRule replaces rule id. Open alerts of devices the rule still
// selects on the same metric and kind carry on under the new parameters;
// the others (and all of them when the rule is disabled) are resolved by
// "system".
func (e *Engine) UpdateRule(ctx context.Context, id string, r Rule) (Rule, error) {
	if id == OfflineRuleID {
		return Rule{}, fmt.Errorf("update rule %s: %w: built-in", id, ErrConflict)
	}
	r = r.withDefaults()
	r.ID = id
	c, err := compile(r)
	if err != nil {
		return Rule{}, err
	}
	e.ruleMu.Lock()
	defer e.ruleMu.Unlock()
	old, err := e.ruleForChange("update", id)
	if err != nil {
		return Rule{}, err
	}
	err = e.storeThenApply("update rule "+id, nil, func() error {
		return e.o.Store.SaveRule(ctx, r)
	}, func() {
		e.idx.remove(old)
		e.rules[id] = c
		e.idx.add(c)
		same := c.Enabled && c.Kind == old.Kind && c.Metric == old.Metric
		now := e.o.Now()
		for dev, s := range e.series[id] {
			d, ok := e.o.Lookup(dev)
			if same && ok && c.Selector.Matches(d) {
				e.timers.schedule(s, s.nextDue(c))
				continue
			}
			e.endSeries(s, c, now, "rule changed")
		}
	})
	if err != nil {
		return Rule{}, err
	}
	return r, e.Flush(ctx)
}

// DeleteRule removes a rule and resolves its open alerts (by "system").
func (e *Engine) DeleteRule(ctx context.Context, id string) error {
	if id == OfflineRuleID {
		return fmt.Errorf("delete rule %s: %w: built-in", id, ErrConflict)
	}
	e.ruleMu.Lock()
	defer e.ruleMu.Unlock()
	c, err := e.ruleForChange("delete", id)
	if err != nil {
		return err
	}
	err = e.storeThenApply("delete rule "+id, nil, func() error {
		return e.o.Store.DeleteRule(ctx, id)
	}, func() {
		delete(e.rules, id)
		e.idx.remove(c)
		now := e.o.Now()
		for _, s := range e.series[id] {
			e.endSeries(s, c, now, "rule deleted")
		}
		delete(e.series, id)
	})
	if err != nil {
		return err
	}
	return e.Flush(ctx)
}

// ruleForChange finds rule id for an update or a delete (op). The caller
// holds ruleMu, so the rule stays as found until its change is applied.
func (e *Engine) ruleForChange(op, id string) (*compiled, error) {
	e.mu.Lock()
	c, ok := e.rules[id]
	e.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%s rule %s: %w", op, id, ErrNotFound)
	}
	return c, nil
}

// storeThenApply makes a rule or silence change in the order that keeps
// memory from running ahead of the Store: check under mu that the change
// may happen, write it to the Store (no lock held but ruleMu, which the
// caller holds), then apply it in memory under mu. A refused check or a
// failed write (wrapped with what) leaves memory as it was. check may be
// nil.
func (e *Engine) storeThenApply(what string, check, persist func() error, apply func()) error {
	if check != nil {
		e.mu.Lock()
		err := check()
		e.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if err := persist(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	e.mu.Lock()
	apply()
	e.mu.Unlock()
	return nil
}

// endSeries resolves or drops whatever a series has open, and forgets it.
func (e *Engine) endSeries(s *series, c *compiled, now time.Time, why string) {
	if s.alert != nil {
		if s.alert.State.open() {
			e.resolve(s, c, now, "system", why)
		} else {
			delete(e.open, s.alert.ID)
			e.markDeleted(s.alert.ID)
			s.alert = nil
		}
	}
	e.dropSeries(s)
}

// ---- alerts ----

var severityRank = map[string]int{SeverityCritical: 0, SeverityWarning: 1, SeverityInfo: 2}

// ListAlerts returns copies of matching alerts: firing first, then
// acknowledged, then recently resolved; within each, most severe and then
// newest first.
func (e *Engine) ListAlerts(f AlertFilter) []Alert {
	var want State
	if f.State != "" {
		st, err := ParseState(f.State)
		if err != nil {
			return nil
		}
		want = st
	}
	match := func(a *Alert) bool {
		if want == 0 && a.State == StatePending || want != 0 && a.State != want {
			return false
		}
		return (f.Severity == "" || a.Severity == f.Severity) &&
			(f.DeviceID == "" || a.DeviceID == f.DeviceID) &&
			(f.Site == "" || a.Site == f.Site)
	}
	var out []Alert
	e.mu.Lock()
	for _, s := range e.open {
		if match(s.alert) {
			out = append(out, s.alert.clone())
		}
	}
	if want == 0 || want == StateResolved {
		for i := range e.resolved {
			if match(&e.resolved[i]) {
				out = append(out, e.resolved[i].clone())
			}
		}
	}
	e.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		if a.State != b.State {
			return stateOrder(a.State) < stateOrder(b.State)
		}
		if ra, rb := severityRank[a.Severity], severityRank[b.Severity]; ra != rb {
			return ra < rb
		}
		if a.State == StateResolved && a.ResolvedAt != nil && b.ResolvedAt != nil {
			return a.ResolvedAt.After(*b.ResolvedAt)
		}
		return a.StartsAt.After(b.StartsAt)
	})
	return out
}

func stateOrder(s State) int {
	switch s {
	case StateFiring:
		return 0
	case StateAcknowledged:
		return 1
	case StatePending:
		return 2
	}
	return 3
}

// GetAlert returns one open, pending or recently resolved alert.
func (e *Engine) GetAlert(id string) (Alert, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s, ok := e.open[id]; ok {
		return s.alert.clone(), nil
	}
	for i := len(e.resolved) - 1; i >= 0; i-- {
		if e.resolved[i].ID == id {
			return e.resolved[i].clone(), nil
		}
	}
	return Alert{}, fmt.Errorf("alert %s: %w", id, ErrNotFound)
}

// ActiveCount returns how many firing or acknowledged alerts a device has.
func (e *Engine) ActiveCount(deviceID string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.byDevice[deviceID])
}

// openAlert finds an open alert for an operator action, or says why not.
func (e *Engine) openAlert(id string) (*series, error) {
	if s, ok := e.open[id]; ok && s.alert.State.open() {
		return s, nil
	}
	if s, ok := e.open[id]; ok && s.alert.State == StatePending {
		return nil, fmt.Errorf("alert %s: %w: pending, not firing yet", id, ErrConflict)
	}
	for i := range e.resolved {
		if e.resolved[i].ID == id {
			return nil, fmt.Errorf("alert %s: %w: already resolved", id, ErrConflict)
		}
	}
	return nil, fmt.Errorf("alert %s: %w", id, ErrNotFound)
}

// Ack acknowledges a firing alert, recording who, when and the note. It
// returns once the change is persisted.
func (e *Engine) Ack(ctx context.Context, id, who, note string) (Alert, error) {
	e.mu.Lock()
	s, err := e.openAlert(id)
	if err != nil {
		e.mu.Unlock()
		return Alert{}, err
	}
	a := s.alert
	if a.State == StateAcknowledged {
		e.mu.Unlock()
		return Alert{}, fmt.Errorf("alert %s: %w: already acknowledged by %s", id, ErrConflict, a.AckedBy)
	}
	c := e.ruleByID(s.rule)
	now := e.o.Now()
	a.State = StateAcknowledged
	a.AckedBy, a.AckNote = who, note
	at := now
	a.AckedAt = &at
	if c.ReackAfter > 0 {
		s.reackAt = now.Add(c.ReackAfter.D())
	}
	// An acknowledgement ends the folding wait: someone is on it.
	s.foldAt = time.Time{}
	e.timers.schedule(s, s.nextDue(c))
	if !a.LastNotifiedAt.IsZero() && !a.Silenced && a.SuppressedBy == "" {
		e.notify(s, c, TransitionAcknowledged, now, 0)
	}
	e.transition(a, TransitionAcknowledged, now)
	out := a.clone()
	e.mu.Unlock()
	if err := e.Flush(ctx); err != nil {
		return out, fmt.Errorf("acknowledge alert %s: %w", id, err)
	}
	return out, nil
}

// Resolve resolves an open alert by hand. A threshold or rate alert whose
// condition still holds opens again on a later reading; an absence alert's
// clock restarts now.
func (e *Engine) Resolve(ctx context.Context, id, who, note string) (Alert, error) {
	e.mu.Lock()
	s, err := e.openAlert(id)
	if err != nil {
		e.mu.Unlock()
		return Alert{}, err
	}
	c := e.ruleByID(s.rule)
	now := e.o.Now()
	a := s.alert
	e.resolve(s, c, now, who, note)
	out := a.clone()
	switch {
	case c.Kind == KindAbsence:
		s.lastSeen = now
		e.timers.schedule(s, s.nextDue(c))
	case c.Kind == KindRate:
		e.timers.schedule(s, s.nextDue(c))
	default:
		e.dropSeries(s)
	}
	e.mu.Unlock()
	if err := e.Flush(ctx); err != nil {
		return out, fmt.Errorf("resolve alert %s: %w", id, err)
	}
	return out, nil
}

// ---- silences ----

// CreateSilence validates and stores a silence; it applies to alerts that
// fire while it lasts.
func (e *Engine) CreateSilence(ctx context.Context, s Silence) (Silence, error) {
	if s.ID == "" {
		s.ID = newID("s-")
	}
	if s.Start.IsZero() {
		s.Start = e.o.Now()
	}
	if err := s.Validate(); err != nil {
		return Silence{}, err
	}
	e.ruleMu.Lock()
	defer e.ruleMu.Unlock()
	// The Store upserts: without this check a create would replace the
	// silence of that id (its window, its selector) and answer as new.
	err := e.storeThenApply("create silence", func() error {
		if _, exists := e.silences[s.ID]; exists {
			return fmt.Errorf("create silence %s: %w: id exists", s.ID, ErrConflict)
		}
		return nil
	}, func() error {
		return e.o.Store.SaveSilence(ctx, s)
	}, func() {
		e.silences[s.ID] = s
	})
	if err != nil {
		return Silence{}, err
	}
	return s, nil
}

// ListSilences returns the silences, soonest ending first.
func (e *Engine) ListSilences(_ context.Context) []Silence {
	e.mu.Lock()
	out := make([]Silence, 0, len(e.silences))
	for _, s := range e.silences {
		out = append(out, s)
	}
	e.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].End.Before(out[j].End) })
	return out
}

// pruneSilences deletes the silences that ended SilenceRetention before
// now: without it every silence ever made would be listed, stored, and
// checked on every alert that fires. A failed delete is tried again at the
// next prune.
func (e *Engine) pruneSilences(ctx context.Context, now time.Time) {
	e.ruleMu.Lock()
	defer e.ruleMu.Unlock()
	var ended []string
	e.mu.Lock()
	for id, sl := range e.silences {
		if now.Sub(sl.End) > e.o.SilenceRetention {
			ended = append(ended, id)
		}
	}
	e.mu.Unlock()
	for _, id := range ended {
		err := e.storeThenApply("prune silence "+id, nil, func() error {
			return e.o.Store.DeleteSilence(ctx, id)
		}, func() {
			delete(e.silences, id)
		})
		if err != nil {
			e.m.storeErrors.Inc()
			e.log.Warn("prune ended silence", "silence_id", id, "err", err)
			return
		}
	}
}

// DeleteSilence removes a silence.
func (e *Engine) DeleteSilence(ctx context.Context, id string) error {
	e.ruleMu.Lock()
	defer e.ruleMu.Unlock()
	return e.storeThenApply("delete silence "+id, func() error {
		if _, ok := e.silences[id]; !ok {
			return fmt.Errorf("silence %s: %w", id, ErrNotFound)
		}
		return nil
	}, func() error {
		return e.o.Store.DeleteSilence(ctx, id)
	}, func() {
		delete(e.silences, id)
	})
}
