package broker

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Reasons a connection is refused (label of auth failure metric).
const (
	reasonBadClientID   = "bad_client_id"
	reasonAnonymous     = "anonymous"
	reasonBadUsername   = "bad_username"
	reasonBadCredential = "bad_credentials"
	reasonWillDenied    = "will_denied"
	reasonClientIDInUse = "client_id_in_use"
	reasonRateLimited   = "rate_limited"
	reasonUnavailable   = "auth_unavailable"
)

// authHook decides who may connect and what each client may publish and
// subscribe to.
//
// All connect checks run in OnConnect rather than OnConnectAuthenticate,
// because only OnConnect can refuse with a fitting CONNACK code (identifier
// rejected, not authorised); OnConnectAuthenticate can only say "bad
// username or password". OnConnect records the identity; OnConnectAuthenticate
// admits exactly the clients it recorded.
type authHook struct {
	mqtt.HookBase
	server          *mqtt.Server
	auth            Authenticator
	serviceUser     string
	servicePassword []byte
	metrics         *metrics
	log             *slog.Logger
	failures        FailureLimiter
	now             func() time.Time
	// A fleet reconnecting while the registry's store is down would log a
	// line per device; the metric counts each, the log says it once per
	// unavailableLogEvery with how many (unavailableN) since.
	unavailableAt atomic.Int64 // unix ns of the last such log line
	unavailableN  atomic.Int64

	mu sync.Mutex // serialises the writers of sessions
	// sessions mirrors mochi's client map (client id → *session) for the
	// clients we admitted, so the ACL knows who a client is. An entry lives
	// as long as mochi keeps the session: persistent sessions of offline
	// clients still receive QoS 1 messages, which pass the ACL. The ACL
	// reads it on every PUBLISH from every connection: a sync.Map reads
	// without a lock, where a read lock's shared counter cost 1.6 % of the
	// process at 40,000 messages/s on two cores.
	sessions sync.Map
}

type session struct {
	cl *mqtt.Client
	id identity
}

func newAuthHook(server *mqtt.Server, auth Authenticator, serviceUser, servicePassword string, failures FailureLimiter, m *metrics, log *slog.Logger) *authHook {
	return &authHook{
		failures:        failures,
		now:             time.Now,
		server:          server,
		auth:            auth,
		serviceUser:     serviceUser,
		servicePassword: []byte(servicePassword),
		metrics:         m,
		log:             log,
	}
}

// ID names the hook in mochi's logs.
func (h *authHook) ID() string { return "infrawatch-auth" }

// Provides lists the hook methods mochi should call. Mochi asks it for
// every hook on every event (several times per PUBLISH), so it is a switch
// rather than a search in a slice built per call.
func (h *authHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnDisconnect, mqtt.OnClientExpired:
		return true
	}
	return false
}

// OnConnect checks, in this order: client id and username syntax (before
// anything else sees them), credentials, the last-will topic, and that the
// client id is not held by a session of someone else. On refusal it sends
// the CONNACK itself and returns the code, which makes mochi drop the
// connection without a second CONNACK.
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	id, code, reason := h.admit(pk, cl.Net.Remote)
	user := string(pk.Connect.Username)
	if reason != "" {
		h.metrics.authFailures.WithLabelValues(reason).Inc()
		h.log.Info("mqtt connection refused", "reason", reason, "remote", cl.Net.Remote,
			"client_id", printable(pk.Connect.ClientIdentifier), "username", printable(user))
		code = v3Code(cl, code)
		_ = h.server.SendConnack(cl, code, false, nil)
		return code
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	// Checked under the lock that also records the new owner, so two
	// principals racing for one client id cannot both win. Every client in
	// mochi's map but the inline one was admitted here, so an unknown
	// client id is free (or held by a connection that is closing).
	s, known := h.lookup(cl.ID)
	existing, exists := h.server.Clients.Get(cl.ID)
	if (known && !s.id.sameOwner(id)) || (exists && existing.Net.Inline) {
		h.metrics.authFailures.WithLabelValues(reasonClientIDInUse).Inc()
		h.log.Info("mqtt connection refused", "reason", reasonClientIDInUse, "remote", cl.Net.Remote,
			"client_id", cl.ID, "username", user)
		_ = h.server.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil)
		return packets.ErrClientIdentifierNotValid
	}
	h.sessions.Store(cl.ID, &session{cl: cl, id: id})
	return nil
}

// admit decides a CONNECT; a non-empty reason means refused with code.
func (h *authHook) admit(pk packets.Packet, remote string) (identity, packets.Code, string) {
	// The raw client id: mochi assigns one when it is empty, but the
	// rule is that clients name themselves.
	if !telemetry.ValidID(pk.Connect.ClientIdentifier) {
		return identity{}, packets.ErrClientIdentifierNotValid, reasonBadClientID
	}
	user := string(pk.Connect.Username)
	if !pk.Connect.UsernameFlag || user == "" {
		return identity{}, packets.ErrNotAuthorized, reasonAnonymous
	}
	if !telemetry.ValidID(user) {
		return identity{}, packets.ErrMalformedUsername, reasonBadUsername
	}
	// Failed logins are limited per source address and username: a
	// guesser is slowed down, while one misconfigured device behind a
	// carrier NAT does not lock out the other devices sharing its address.
	key := remoteHost(remote) + " " + user
	if ok, _ := h.failures.Allow(key, h.now()); !ok {
		return identity{}, packets.ErrConnectionRateExceeded, reasonRateLimited
	}
	id, ok, err := h.authenticate(user, pk.Connect.Password)
	if err != nil {
		// Not the client's fault: a device with the right secret must not
		// be told its password is wrong (many clients then give up), nor
		// be locked out by the failure limit once the store is back.
		h.logUnavailable(user, err)
		return identity{}, packets.ErrServerUnavailable, reasonUnavailable
	}
	if !ok {
		h.failures.Fail(key, h.now())
		return identity{}, packets.ErrBadUsernameOrPassword, reasonBadCredential
	}
	// Mochi publishes a will without asking the ACL, so it is judged here,
	// while the client can still be told.
	if pk.Connect.WillFlag && !id.mayPublish(pk.Connect.WillTopic) {
		h.metrics.aclDenied.WithLabelValues(id.kind.String(), actionWill).Inc()
		return identity{}, packets.ErrNotAuthorized, reasonWillDenied
	}
	return id, packets.CodeSuccess, ""
}

// unavailableLogEvery is how often logins the registry could not check are
// logged.
const unavailableLogEvery = 10 * time.Second

// logUnavailable logs a login the registry could not check, at most once
// per unavailableLogEvery, with the number refused since the last line.
func (h *authHook) logUnavailable(user string, err error) {
	h.unavailableN.Add(1)
	now := h.now().UnixNano()
	last := h.unavailableAt.Load()
	if last != 0 && now-last < int64(unavailableLogEvery) || !h.unavailableAt.CompareAndSwap(last, now) {
		return
	}
	h.log.Error("mqtt logins not checked: the registry is unreadable", "refused", h.unavailableN.Swap(0),
		"last_username", printable(user), "err", err)
}

// authenticate resolves username and password to an identity.
func (h *authHook) authenticate(user string, password []byte) (identity, bool, error) {
	if len(password) == 0 {
		return identity{}, false, nil
	}
	switch user {
	case h.serviceUser:
		if subtle.ConstantTimeCompare(password, h.servicePassword) == 1 {
			return identity{kind: kindService}, true, nil
		}
	case TokenUsername:
		role, ok := h.auth.AuthenticateToken(string(password))
		if ok && (role == RoleViewer || role == RoleOperator || role == RoleAdmin) {
			return identity{kind: kindPerson, role: role}, true, nil
		}
	default:
		ok, err := h.auth.AuthenticateDevice(user, string(password))
		if err != nil {
			return identity{}, false, err
		}
		if ok {
			return identity{kind: kindDevice, name: user}, true, nil
		}
	}
	return identity{}, false, nil
}

// OnConnectAuthenticate admits the clients OnConnect recorded.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	_, ok := h.identity(cl)
	return ok
}

// OnACLCheck is asked for every PUBLISH a client sends (write), every
// SUBSCRIBE filter, and every message about to be delivered (topic).
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	id, ok := h.identity(cl)
	var allowed bool
	action := actionSubscribe
	if write {
		action = actionPublish
		allowed = ok && id.mayPublish(topic)
	} else {
		allowed = ok && id.maySubscribe(topic)
	}
	if !allowed {
		h.metrics.aclDenied.WithLabelValues(id.kind.String(), action).Inc()
	}
	return allowed
}

// OnDisconnect forgets a client whose session ends with its connection
// (mochi's own rule for deleting it), unless a newer connection took it over.
func (h *authHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() {
		h.forget(cl)
	}
}

// OnClientExpired forgets a persistent session mochi expired.
func (h *authHook) OnClientExpired(cl *mqtt.Client) {
	h.forget(cl)
}

func (h *authHook) forget(cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.lookup(cl.ID); ok && s.cl == cl {
		h.sessions.Delete(cl.ID)
	}
}

// identity returns who cl is; a client replaced by a newer connection with
// the same id is no longer anyone.
func (h *authHook) identity(cl *mqtt.Client) (identity, bool) {
	s, ok := h.lookup(cl.ID)
	if !ok || s.cl != cl {
		return identity{}, false
	}
	return s.id, true
}

// lookup returns the session recorded for a client id.
func (h *authHook) lookup(clientID string) (*session, bool) {
	v, ok := h.sessions.Load(clientID)
	if !ok {
		return nil, false
	}
	return v.(*session), true
}

// v3Code translates a CONNACK reason for an MQTT 3 client. Mochi maps most
// v5 codes itself but sends 0x87 (not authorised) unchanged, which a v3
// client does not know; paho even reads it as success.
func v3Code(cl *mqtt.Client, code packets.Code) packets.Code {
	if cl.Properties.ProtocolVersion < 5 && code == packets.ErrNotAuthorized {
		return packets.Err3NotAuthorized
	}
	if cl.Properties.ProtocolVersion < 5 && code == packets.ErrConnectionRateExceeded {
		return packets.Err3ServerUnavailable
	}
	return code
}

// remoteHost is the address part of host:port (all of it when there is no
// port).
func remoteHost(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}

// printable bounds and quotes outside input for a log line.
func printable(s string) string {
	const limit = 80
	if len(s) > limit {
		s = s[:limit]
	}
	return fmt.Sprintf("%q", s)
}
