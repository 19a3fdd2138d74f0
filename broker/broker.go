package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infrawatch/infrawatch/auth"
	"github.com/infrawatch/infrawatch/telemetry"
)

// Defaults for Options.
const (
	DefaultListen           = "127.0.0.1:1883"
	DefaultServiceUser      = "infrawatch"
	DefaultMaxPendingWrites = 1024
	DefaultReceiveMaximum   = 65535
	DefaultMaxInflight      = 65535
	DefaultMaxPacketBytes   = 256 << 10
	DefaultMaxSessionExpiry = 24 * time.Hour
)

// TokenUsername is the MQTT username people's clients use; their password
// is an API token.
const TokenUsername = "token"

// Roles an API token may carry, as returned by Authenticator.AuthenticateToken.
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

// Authenticator is what the broker asks; devices.Registry and auth.Tokens are
// adapted to it by cmd. Both methods are called on every CONNECT that gets
// past the syntax checks, so they should be cheap and must be safe for
// concurrent use.
type Authenticator interface {
	// AuthenticateDevice reports whether secret is the MQTT password of
	// device id. An error means it could not tell (the registry's store
	// unreadable): the client is told the server is unavailable, not that
	// its password is wrong, and the attempt is not counted as a failure.
	AuthenticateDevice(id, secret string) (bool, error)
	// AuthenticateToken returns the role ("viewer", "operator" or "admin")
	// of a valid API token.
	AuthenticateToken(token string) (role string, ok bool)
}

// Options configure a Broker. Zero values take the defaults above.
type Options struct {
	// Listen is the TCP address to serve MQTT on, "127.0.0.1:1883" by default.
	// Port 0 picks a free port; Addr reports it.
	Listen string
	// Auth checks device secrets and API tokens. Required.
	Auth Authenticator
	// ServiceUser and ServicePassword are the internal identity ingest and
	// alerts use. It may subscribe to anything and publish to alerts/# and
	// infrawatch/deadletter/#. ServiceUser defaults to "infrawatch";
	// ServicePassword is required. A device whose id equals ServiceUser can
	// never log in as that device.
	ServiceUser, ServicePassword string
	// MaxPendingWrites bounds each client's outbound queue (mochi's
	// Capabilities.MaximumClientWritesPending); a message that finds the
	// queue full is dropped and counted. Mochi allocates the queue up
	// front, 8 bytes per slot per connection: 512 KiB per client at 65536.
	// Default 1024 (8 KiB per client): devices receive little (ingest takes
	// their telemetry in process, see Intercept), so the many device
	// connections should not each pay for the one busy subscriber that an
	// ingest over MQTT would be; mochi's 8192 dropped about a fifth of QoS 0
	// messages to such a subscriber under load, 65536 none.
	MaxPendingWrites int
	// ReceiveMaximum is how many unacknowledged QoS 1/2 messages a client may
	// send at once; MaxInflight how many QoS 1/2 messages the broker keeps
	// per client awaiting acknowledgement. Both default to 65535, the most
	// MQTT allows.
	ReceiveMaximum, MaxInflight int
	// MaxPacketBytes bounds one MQTT packet; a client sending a larger one
	// is disconnected before the broker buffers it, so a 10 MB payload
	// costs bounded memory. Default 256 KiB: above ingest's payload limit
	// (64 KiB), so payloads between the two still reach ingest and are
	// dead-lettered as too_large.
	MaxPacketBytes int
	// MaxSessionExpiry caps how long a persistent session (clean session
	// off) outlives its connection, so abandoned sessions do not keep
	// queueing messages forever. Default 24h.
	MaxSessionExpiry time.Duration
	// Logger receives the broker's own logs (mochi's at warn and above, and
	// refused connections at info). Default: discard.
	Logger *slog.Logger
	// Registerer receives the broker's metrics. Default: a private registry,
	// i.e. not exported.
	Registerer prometheus.Registerer
	// TLSConfig, when set, makes the listener speak MQTT over TLS only
	// (it needs at least one certificate); plain MQTT is then refused.
	TLSConfig *tls.Config
	// AuthFailures limits failed logins per source address and username;
	// over the limit a CONNECT is refused (v5: connection rate exceeded,
	// v3: server unavailable) before its credentials are checked.
	// Default: auth.NewFailureLimiter with its defaults (10 a minute,
	// burst 20).
	AuthFailures FailureLimiter
}

// FailureLimiter limits failed authentications per key; auth.FailureLimiter
// implements it.
type FailureLimiter interface {
	// Allow reports whether key may try to authenticate at now.
	Allow(key string, now time.Time) (bool, time.Duration)
	// Fail records a failed authentication.
	Fail(key string, now time.Time)
}

func (o *Options) setDefaults() {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.ServiceUser == "" {
		o.ServiceUser = DefaultServiceUser
	}
	if o.MaxPendingWrites == 0 {
		o.MaxPendingWrites = DefaultMaxPendingWrites
	}
	if o.MaxPacketBytes == 0 {
		o.MaxPacketBytes = DefaultMaxPacketBytes
	}
	if o.ReceiveMaximum == 0 {
		o.ReceiveMaximum = DefaultReceiveMaximum
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.MaxSessionExpiry == 0 {
		o.MaxSessionExpiry = DefaultMaxSessionExpiry
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.AuthFailures == nil {
		o.AuthFailures = auth.NewFailureLimiter(auth.FailureLimiterOptions{})
	}
}

// Validate reports every invalid field, by name.
func (o *Options) Validate() error {
	var errs []error
	if o.Auth == nil {
		errs = append(errs, errors.New("Auth: required"))
	}
	if !telemetry.ValidID(o.ServiceUser) || o.ServiceUser == TokenUsername {
		errs = append(errs, fmt.Errorf("ServiceUser: %q must match %s and not be %q", o.ServiceUser, idPattern, TokenUsername))
	}
	if o.ServicePassword == "" {
		errs = append(errs, errors.New("ServicePassword: required"))
	}
	if o.MaxPendingWrites < 1 || o.MaxPendingWrites > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("MaxPendingWrites: %d out of range 1..%d", o.MaxPendingWrites, math.MaxInt32))
	}
	if o.ReceiveMaximum < 1 || o.ReceiveMaximum > math.MaxUint16 {
		errs = append(errs, fmt.Errorf("ReceiveMaximum: %d out of range 1..%d", o.ReceiveMaximum, math.MaxUint16))
	}
	if o.MaxPacketBytes < 1024 || o.MaxPacketBytes > 256<<20 {
		errs = append(errs, fmt.Errorf("MaxPacketBytes: %d out of range 1024..%d", o.MaxPacketBytes, 256<<20))
	}
	if o.MaxInflight < 1 || o.MaxInflight > math.MaxUint16 {
		errs = append(errs, fmt.Errorf("MaxInflight: %d out of range 1..%d", o.MaxInflight, math.MaxUint16))
	}
	if o.TLSConfig != nil && len(o.TLSConfig.Certificates) == 0 && o.TLSConfig.GetCertificate == nil {
		errs = append(errs, errors.New("TLSConfig: has no certificate"))
	}
	if o.MaxSessionExpiry < time.Second || o.MaxSessionExpiry > math.MaxUint32*time.Second {
		errs = append(errs, fmt.Errorf("MaxSessionExpiry: %s out of range 1s..%ds", o.MaxSessionExpiry, uint32(math.MaxUint32)))
	}
	return errors.Join(errs...)
}

// Broker is the embedded MQTT broker. Create it with New, then Start it.
type Broker struct {
	opts   Options
	server *mqtt.Server
	hook   *authHook
	// intercept is added by the first Intercept (before Start).
	intercept *interceptHook
	log       *slog.Logger
	mu        sync.Mutex
	tcp       *listeners.TCP // set by Start
	ln        *tcpListener   // tcp, as mochi serves it
	started   bool
	closed    bool
}

// New builds a broker from o (defaults filled in) without listening yet.
func New(o Options) (*Broker, error) {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("mqtt broker options: %w", err)
	}
	log := o.Logger.With("component", "mqtt_broker")

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = int32(o.MaxPendingWrites)
	caps.ReceiveMaximum = uint16(o.ReceiveMaximum)
	caps.MaximumInflight = uint16(o.MaxInflight)
	caps.MaximumPacketSize = uint32(o.MaxPacketBytes)
	caps.MaximumSessionExpiryInterval = uint32(o.MaxSessionExpiry / time.Second)
	// Mochi checks the publish ACL before it resolves an inbound topic
	// alias, so an aliased publish would be judged on an empty topic. No
	// aliases, then: v5 clients are told the maximum is 0.
	caps.TopicAliasMaximum = 0

	server := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// Mochi logs every client error, keepalive warning and refused
		// connection; below warn it is per-connection noise.
		Logger: slog.New(minLevel{Handler: log.Handler(), min: slog.LevelWarn}),
		// The inline client lets cmd publish and subscribe in-process
		// through Server(). It bypasses the ACL by design.
		InlineClient: true,
	})

	m := newMetrics(server.Info)
	if err := m.register(o.Registerer); err != nil {
		return nil, fmt.Errorf("register mqtt broker metrics: %w", err)
	}
	hook := newAuthHook(server, o.Auth, o.ServiceUser, o.ServicePassword, o.AuthFailures, m, log)
	if err := server.AddHook(hook, nil); err != nil {
		return nil, fmt.Errorf("add mqtt auth hook: %w", err)
	}
	return &Broker{opts: o, server: server, hook: hook, log: log}, nil
}

// Start listens on Options.Listen (an error if the address is taken) and
// serves in the background until Close. ctx only bounds starting up.
func (b *Broker) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start mqtt broker: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("start mqtt broker: already closed")
	}
	if b.started {
		return errors.New("start mqtt broker: already started")
	}
	var tlsConf *tls.Config
	if b.opts.TLSConfig != nil {
		tlsConf = b.opts.TLSConfig.Clone()
		if tlsConf.MinVersion < tls.VersionTLS12 {
			tlsConf.MinVersion = tls.VersionTLS12
		}
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: b.opts.Listen, TLSConfig: tlsConf})
	ln := newTCPListener(tcp)
	if err := b.server.AddListener(ln); err != nil {
		return fmt.Errorf("listen for mqtt on %s: %w", b.opts.Listen, err)
	}
	if err := b.server.Serve(); err != nil {
		tcp.Close(func(string) {})
		return fmt.Errorf("serve mqtt on %s: %w", tcp.Address(), err)
	}
	b.tcp, b.ln, b.started = tcp, ln, true
	b.log.Info("mqtt broker listening", "addr", tcp.Address(), "tls", tlsConf != nil)
	return nil
}

// Addr returns the address the broker listens on (with the actual port when
// Options.Listen asked for port 0), or "" before Start.
func (b *Broker) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tcp == nil {
		return ""
	}
	return b.tcp.Address()
}

// closeWait bounds how long Close waits for the disconnected clients'
// connections to end before it closes the server.
const closeWait = 5 * time.Second

// Close disconnects every client, stops listening and waits for the client
// goroutines to end. It is safe to call more than once, and without Start.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.intercept != nil {
		// PUBACKs of what ingest stored, before the clients go.
		b.intercept.acks.close()
	}
	if b.tcp != nil {
		// Mochi disconnects a listener's clients only the first time the
		// listener is closed; after StopAccepting (or Drain) that is done
		// here, else server.Close would wait for them forever.
		for _, cl := range b.server.Clients.GetByListener(b.tcp.ID()) {
			_ = b.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
		b.ln.quiesce(closeWait)
	}
	if err := b.server.Close(); err != nil {
		return fmt.Errorf("close mqtt broker: %w", err)
	}
	return nil
}

// Server returns the mochi server, for cmd to use its inline client
// (Server().Publish, Server().Subscribe). Those bypass the ACL.
func (b *Broker) Server() *mqtt.Server {
	return b.server
}
