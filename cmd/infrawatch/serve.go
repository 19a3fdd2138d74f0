package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/infrawatch/infrawatch/alerts"
	"github.com/infrawatch/infrawatch/auth"
	"github.com/infrawatch/infrawatch/broker"
	"github.com/infrawatch/infrawatch/configs"
	streamhub "github.com/infrawatch/infrawatch/dashboard-api/stream"
	"github.com/infrawatch/infrawatch/devices"
	"github.com/infrawatch/infrawatch/history"
	"github.com/infrawatch/infrawatch/ingest"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (default: built-in defaults, see configs/infrawatch.yaml)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := configs.Load(*cfgPath, environ())
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	logger := newLogger(cfg.Log, stderr)
	gc := "GOGC"
	if p, ok := gcPercent(os.LookupEnv); ok {
		debug.SetGCPercent(p)
		gc = strconv.Itoa(p)
	}
	srv, err := startServer(ctx, cfg, logger)
	if err != nil {
		return err
	}
	logger.Info("infrawatch serving", "http", srv.HTTPAddr(), "mqtt", srv.MQTTAddr(), "influx", cfg.Redacted().Influx.URL,
		"gc_percent", gc)
	select {
	case <-ctx.Done():
	case err = <-srv.failed:
		logger.Error("component failed; shutting down", "err", err)
	}
	logger.Info("shutting down", "deadline", cfg.HTTP.ShutdownTimeout)
	// http.shutdown_timeout bounds the whole shutdown: a component that
	// hangs must not keep the process (and its port) forever.
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(cfg.HTTP.ShutdownTimeout):
		return errors.Join(err, fmt.Errorf("shutdown did not finish within http.shutdown_timeout (%s)", cfg.HTTP.ShutdownTimeout))
	}
	logger.Info("infrawatch stopped")
	return err
}

func newLogger(c configs.LogConfig, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.SlogLevel()}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// server is a running `infrawatch serve`: every component, started in
// dependency order and stopped in reverse.
type server struct {
	cfg      *configs.Config
	log      *slog.Logger
	metrics  *prometheus.Registry
	db       *sql.DB
	registry *devices.Registry
	live     *devices.Live
	tokens   *auth.Tokens
	broker   *broker.Broker
	// servicePass is the embedded broker's service password (random per
	// start); kept so tests can check it never reaches a log.
	servicePass string
	store       *store.Store
	ingester    *ingest.Ingester
	alerts      *alerts.Engine
	hub         *streamhub.Hub
	history     *history.Service
	closers     []func() // notifiers and publishers, closed after the engine stops
	http        *http.Server
	httpLn      net.Listener

	// stopIngest and ingestDone stop ingest, and wait for it, before the
	// rest: its consumers (live state, hub, alert engine) must outlive the
	// last reading it takes, or a reading stored and acknowledged at
	// shutdown would reach an engine that has already made its final
	// evaluation and flush.
	stopIngest context.CancelFunc
	ingestDone chan struct{}

	cancel context.CancelFunc
	wg     sync.WaitGroup
	failed chan error
	once   sync.Once
}

// startServer starts every component and returns once the HTTP API and the
// broker are listening and ingest is running. Close stops it.
func startServer(ctx context.Context, cfg *configs.Config, logger *slog.Logger) (s *server, err error) {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s = &server{cfg: cfg, log: logger, metrics: prometheus.NewRegistry(), cancel: cancel, failed: make(chan error, 4)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.metrics.MustRegister(collectors.NewGoCollector(
		// The live heap after the last GC (go_gc_heap_live_bytes), which the
		// go_memstats_* set only implies through the next GC's target, and
		// the soft memory limit in force (go_gc_gomemlimit_bytes).
		collectors.WithGoCollectorRuntimeMetrics(collectors.GoRuntimeMetricsRule{
			Matcher: regexp.MustCompile(`^/gc/(heap/live|gomemlimit|gogc):`)}),
	), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if s.db, err = devices.OpenDB(cfg.Devices.DBPath); err != nil {
		return s, fmt.Errorf("open registry database %s: %w", cfg.Devices.DBPath, err)
	}
	devStore, err := devices.NewSQLiteStore(ctx, s.db)
	if err != nil {
		return s, fmt.Errorf("open device store: %w", err)
	}
	if s.registry, err = devices.NewRegistry(ctx, devStore); err != nil {
		return s, fmt.Errorf("load device registry: %w", err)
	}
	if s.tokens, err = auth.NewTokens(ctx, s.db, cfg.Auth.AdminToken); err != nil {
		return s, fmt.Errorf("load API tokens: %w", err)
	}
	statusEvents := newFanout[telemetry.StatusEvent]()
	s.live = devices.NewLive(devices.LiveOptions{
		Lookup:        s.registry.Lookup,
		OnStatus:      statusEvents.Publish,
		SweepInterval: cfg.Devices.SweepInterval,
		Registerer:    s.metrics,
		Registered:    s.registry.Count,
	})
	s.goRun("live state", func(ctx context.Context) error { s.live.Run(ctx); return nil }, runCtx)

	if s.store, err = store.New(ctx, store.Options{
		URL: cfg.Influx.URL, Token: cfg.Influx.Token, Org: cfg.Influx.Org, Bucket: cfg.Influx.Bucket,
		Timeout: cfg.Influx.Timeout, CreateDatabase: true, Logger: logger, Registerer: s.metrics,
	}); err != nil {
		return s, fmt.Errorf("connect to InfluxDB %s: %w", cfg.Redacted().Influx.URL, err)
	}

	brokerURL, user, pass := cfg.MQTT.BrokerURL, cfg.MQTT.Username, cfg.MQTT.Password
	var ingestTLS *tls.Config
	if brokerURL == "" {
		serverTLS, clientTLS, err := brokerTLS(cfg.Broker)
		if err != nil {
			return s, err
		}
		ingestTLS = clientTLS
		pass = randomSecret()
		s.servicePass = pass
		user = broker.DefaultServiceUser
		if s.broker, err = broker.New(broker.Options{
			Listen:           cfg.Broker.Listen,
			Auth:             brokerAuth{registry: s.registry, tokens: s.tokens},
			ServiceUser:      user,
			ServicePassword:  pass,
			MaxPendingWrites: cfg.Broker.MaxPendingWrites,
			ReceiveMaximum:   cfg.Broker.ReceiveMaximum,
			MaxInflight:      cfg.Broker.MaxInflight,
			MaxPacketBytes:   cfg.Broker.MaxPacketBytes,
			TLSConfig:        serverTLS,
			AuthFailures:     failureLimiter(cfg.Auth),
			Logger:           logger,
			Registerer:       s.metrics,
		}); err != nil {
			return s, fmt.Errorf("embedded broker: %w", err)
		}
		// Started by startBroker once ingest is attached: no telemetry may
		// be acknowledged before ingest is there to make it durable.
	}

	if err = s.startAlerts(ctx, runCtx, statusEvents, brokerURL, user, pass); err != nil {
		return s, err
	}
	// Before ingest takes messages, so that live state and absence timers
	// start from what InfluxDB holds (devices heard since are skipped anyway).
	s.seedState(ctx)

	if s.hub, err = streamhub.NewHub(streamhub.Options{Lookup: s.registry.Lookup, Registerer: s.metrics, Logger: logger,
		MaxSendRate: cfg.HTTP.StreamMaxSendRate}); err != nil {
		return s, fmt.Errorf("stream hub: %w", err)
	}
	statusEvents.Subscribe(s.hub.Status)
	s.goRun("stream", s.hub.Run, runCtx)
	s.goRun("alert events", s.forwardAlerts, runCtx)

	// The hub comes after live state: a websocket snapshot is read from live
	// state, and the hub's sequence guarantee relies on live being updated first.
	consumers := []telemetry.Consumer{s.live, s.hub, s.alerts}
	var autoRegister func(context.Context, string) (*telemetry.Device, error)
	if cfg.Ingest.AutoRegister {
		autoRegister = s.autoRegister
	}
	var local ingest.LocalBroker
	if s.broker != nil {
		local = localPublisher{s.broker.Server()}
	}
	if s.ingester, err = ingest.New(ingest.Options{
		Local:     local,
		BrokerURL: brokerURL, ClientID: cfg.MQTT.ClientID, Username: user, Password: pass, TLSConfig: ingestTLS,
		SharedGroup: cfg.MQTT.SharedGroup, KeepAlive: cfg.MQTT.Keepalive, ConnectTimeout: cfg.MQTT.ConnectTimeout,
		Lookup: s.registry.Lookup, AutoRegister: autoRegister,
		Writer: s.store, Consumers: consumers, Status: s.live,
		MaxPayloadBytes: cfg.Ingest.MaxPayloadBytes, MaxReadings: cfg.Ingest.MaxReadings,
		MaxAge: cfg.Ingest.MaxAge, MaxFuture: cfg.Ingest.MaxFuture,
		BatchSize: cfg.Influx.BatchSize, FlushInterval: cfg.Influx.FlushInterval, WriteTimeout: cfg.Influx.Timeout,
		QueueSize: cfg.Ingest.QueueSize, Workers: cfg.Ingest.Workers, WriteConcurrency: cfg.Ingest.WriteConcurrency,
		DeviceRateLimit: float64(cfg.Ingest.DeviceRateLimit), DeviceBurst: cfg.Ingest.DeviceBurst,
		SpoolDir: cfg.Ingest.SpoolDir, SpoolMaxBytes: cfg.Ingest.SpoolMaxBytes,
		DeadLetterStoreSize: cfg.Ingest.DeadLetterStoreSize, DeadLetterStoreBytes: cfg.Ingest.DeadLetterStoreBytes,
		Logger: logger, Registerer: s.metrics,
	}); err != nil {
		return s, fmt.Errorf("ingest: %w", err)
	}
	ingestCtx, stopIngest := context.WithCancel(runCtx)
	s.stopIngest, s.ingestDone = stopIngest, make(chan struct{})
	s.goRun("ingest", func(ctx context.Context) error {
		defer close(s.ingestDone)
		return s.ingester.Run(ctx)
	}, ingestCtx)
	if s.broker != nil {
		if err = s.startBroker(ctx); err != nil {
			return s, err
		}
	}
	if err = s.startPprof(runCtx); err != nil {
		return s, err
	}

	if err = s.startHistory(ctx, runCtx); err != nil {
		return s, err
	}

	handler, err := s.newAPI()
	if err != nil {
		return s, err
	}
	if s.httpLn, err = net.Listen("tcp", cfg.HTTP.Listen); err != nil {
		return s, fmt.Errorf("listen for HTTP on %s: %w", cfg.HTTP.Listen, err)
	}
	s.http = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	s.goRun("http", func(context.Context) error {
		var err error
		if cfg.HTTP.TLSCert != "" {
			err = s.http.ServeTLS(s.httpLn, cfg.HTTP.TLSCert, cfg.HTTP.TLSKey)
		} else {
			err = s.http.Serve(s.httpLn)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve HTTP: %w", err)
	}, runCtx)
	return s, nil
}

// goRun runs a component until ctx ends; an error from it stops the server.
func (s *server) goRun(name string, run func(context.Context) error, ctx context.Context) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := run(ctx); err != nil && ctx.Err() == nil {
			select {
			case s.failed <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	}()
}

// HTTPAddr is the address the API listens on.
func (s *server) HTTPAddr() string { return s.httpLn.Addr().String() }

// MQTTAddr is the embedded broker's address, or "" with an external broker.
func (s *server) MQTTAddr() string {
	if s.broker == nil {
		return ""
	}
	return s.broker.Addr()
}

// Close stops accepting HTTP requests and new MQTT connections, stops
// ingest (which stores what it took and acknowledges it to the devices,
// still connected; what it did not take is never acknowledged, so devices
// send it again), then, once ingest has handed over its last reading, the
// engine and the other components, then the notifiers, the broker
// (disconnecting devices) and the stores. HTTP gets three quarters of
// http.shutdown_timeout, so that the rest of the shutdown fits in
// cmdServe's hard deadline.
func (s *server) Close() {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HTTP.ShutdownTimeout*3/4)
		defer cancel()
		if s.http != nil {
			if err := s.http.Shutdown(ctx); err != nil {
				s.log.Warn("HTTP requests still in flight at shutdown", "err", err)
			}
		}
		if s.broker != nil {
			// Ingest is in process and acknowledges (PUBACK) only what it
			// stored: stop new connections, let ingest store and ack what it
			// took while devices are still connected, then Close below
			// disconnects them.
			s.broker.StopAccepting()
		}
		if s.stopIngest != nil {
			s.stopIngest()
			<-s.ingestDone
		}
		s.cancel()
		s.wg.Wait()
		for i := len(s.closers) - 1; i >= 0; i-- {
			s.closers[i]()
		}
		if s.broker != nil {
			_ = s.broker.Close()
		}
		if s.store != nil {
			s.store.Close()
		}
		if s.db != nil {
			_ = s.db.Close()
		}
	})
}

// ready is the /readyz check: the MQTT connection and InfluxDB.
func (s *server) ready(ctx context.Context) error {
	if !s.ingester.Connected() {
		return errors.New("mqtt: ingest is not connected to the broker")
	}
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("influxdb: %w", err)
	}
	return nil
}

// autoRegister registers a device first seen on an external broker with
// what its topic tells (its id) and placeholders an admin fixes later.
func (s *server) autoRegister(ctx context.Context, id string) (*telemetry.Device, error) {
	_, err := s.registry.Create(ctx, devices.Device{
		ID: id, Name: id, Domain: "unassigned", Type: "unassigned", Site: "unassigned",
		Tags: map[string]string{"auto_registered": "true"},
	})
	if err != nil && !errors.Is(err, devices.ErrExists) {
		return nil, fmt.Errorf("auto-register device %s: %w", id, err)
	}
	d, ok := s.registry.Lookup(id)
	if !ok {
		return nil, fmt.Errorf("auto-register device %s: not found after create", id)
	}
	s.log.Info("device auto-registered", "device_id", id)
	return d, nil
}

// brokerAuth adapts the registry and the token store to the broker.
type brokerAuth struct {
	registry *devices.Registry
	tokens   *auth.Tokens
}

// loginTimeout bounds the registry's read of a device's secret hash at
// CONNECT: mochi's connect hook has no context to pass down.
const loginTimeout = 5 * time.Second

// AuthenticateDevice checks a device's MQTT password against the registry;
// an error (the store unreadable) makes the broker answer "server
// unavailable".
func (a brokerAuth) AuthenticateDevice(id, secret string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), loginTimeout)
	defer cancel()
	return a.registry.VerifySecret(ctx, id, secret)
}

func (a brokerAuth) AuthenticateToken(token string) (string, bool) {
	_, role, ok := a.tokens.Verify(token)
	if !ok {
		return "", false
	}
	return role.String(), true
}

func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// startAlerts starts the alert engine with its notifiers: webhooks, MQTT
// (in-process through the embedded broker, else a connection of its own)
// and alert_events in InfluxDB.
func (s *server) startAlerts(ctx, runCtx context.Context, status *fanout[telemetry.StatusEvent], brokerURL, user, pass string) error {
	cfg := s.cfg.Alerts
	secret := cfg.WebhookSecret
	if secret == "" {
		secret = randomSecret()
		s.log.Warn("alerts.webhook_secret is not set: webhook signatures use a random key until restart")
	}
	webhooks, err := alerts.NewWebhookNotifier(alerts.WebhookOptions{
		Secret: secret, Timeout: cfg.WebhookTimeout, Logger: s.log, Registerer: s.metrics,
	})
	if err != nil {
		return fmt.Errorf("webhook notifier: %w", err)
	}
	s.closers = append(s.closers, webhooks.Close)
	var pub alerts.Publisher
	if s.broker != nil {
		pub = inlinePublisher{s.broker.Server()}
	} else {
		p, err := newPahoPublisher(ctx, brokerURL, s.cfg.MQTT.ClientID+"-alerts", user, pass, s.cfg.MQTT.ConnectTimeout)
		if err != nil {
			return err
		}
		s.closers = append(s.closers, p.Close)
		pub = p
	}
	mqttN, err := alerts.NewMQTTNotifier(alerts.MQTTOptions{Publisher: pub, Logger: s.log, Registerer: s.metrics})
	if err != nil {
		return fmt.Errorf("MQTT notifier: %w", err)
	}
	s.closers = append(s.closers, mqttN.Close)
	alertStore, err := alerts.NewSQLiteStore(ctx, s.db)
	if err != nil {
		return fmt.Errorf("open alert store: %w", err)
	}
	if s.alerts, err = alerts.NewEngine(ctx, alerts.Options{
		Lookup:           s.registry.Lookup,
		DevicesByGateway: s.registry.DevicesBehind,
		Store:            alertStore,
		Notifiers:        []alerts.Notifier{webhooks, mqttN},
		Events:           s.store,
		Logger:           s.log,
		Registerer:       s.metrics,
		FoldWait:         cfg.FoldWait,
		OfflineSeverity:  cfg.OfflineSeverity,
		ReorderWindow:    cfg.ReorderWindow,
		RedeliverWithin:  cfg.RedeliverWithin,
		SilenceRetention: cfg.SilenceRetention,
	}); err != nil {
		return fmt.Errorf("alert engine: %w", err)
	}
	status.Subscribe(s.alerts.DeviceStatus)
	s.goRun("alerts", func(ctx context.Context) error { s.alerts.Run(ctx); return nil }, runCtx)
	return nil
}

// forwardAlerts hands every alert transition to the websocket hub. The
// engine drops (and counts) events for a subscriber that falls behind, so
// evaluation never waits for this loop.
func (s *server) forwardAlerts(ctx context.Context) error {
	events, cancel := s.alerts.Subscribe(4096)
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			a := ev.Alert
			var domain string
			if d, ok := s.registry.Lookup(a.DeviceID); ok {
				domain = d.Domain
			}
			s.hub.Alert(streamhub.AlertEvent{Transition: ev.Transition, Alert: a, DeviceID: a.DeviceID, Site: a.Site, Domain: domain})
		}
	}
}

// startHistory opens the history service on stores of its own: queries get
// the longer history.query_timeout, and the hourly rollup writes to its own
// tier (retention policy rollup_1h on 1.x, bucket <bucket>_rollup_1h on 2.x).
func (s *server) startHistory(ctx, runCtx context.Context) error {
	cfg, h := s.cfg.Influx, s.cfg.History
	query, err := store.New(ctx, store.Options{
		URL: cfg.URL, Token: cfg.Token, Org: cfg.Org, Bucket: cfg.Bucket, Timeout: h.QueryTimeout, Logger: s.log,
	})
	if err != nil {
		return fmt.Errorf("history store: %w", err)
	}
	s.closers = append(s.closers, query.Close)
	o := history.Options{
		Store: query, Bucket: cfg.Bucket,
		RollupInterval: h.RollupInterval, RollupLookback: h.RollupLookback, RollupBackfill: h.RollupBackfill,
		RawRetention: h.RawRetention, RollupRetention: h.RollupRetention,
		Logger: s.log, Registerer: s.metrics,
	}
	if s.store.IsV1() {
		o.InfluxURL, o.InfluxAuth = cfg.URL, cfg.Token
	}
	if h.Rollup {
		db, _, _ := strings.Cut(cfg.Bucket, "/")
		o.RollupBucket = db + "/rollup_1h"
		if !s.store.IsV1() {
			o.RollupBucket = cfg.Bucket + "_rollup_1h"
		}
		w, err := store.New(ctx, store.Options{
			URL: cfg.URL, Token: cfg.Token, Org: cfg.Org, Bucket: o.RollupBucket, Timeout: cfg.Timeout, Logger: s.log,
		})
		if err != nil {
			return fmt.Errorf("history rollup store: %w", err)
		}
		s.closers = append(s.closers, w.Close)
		o.RollupWriter = w
	}
	if s.history, err = history.New(o); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if err := s.history.EnsureRetention(ctx); err != nil {
		return fmt.Errorf("history retention policies: %w", err)
	}
	if h.Rollup {
		s.goRun("history rollup", s.history.RunRollup, runCtx)
	}
	return nil
}
