package broker

import "strings"

// idPattern is the rule for device and gateway ids, MQTT usernames and
// client ids, so that no identity can act as a topic wildcard or level
// (telemetry.ValidID checks it).
const idPattern = "^[A-Za-z0-9_-]{1,64}$"

// kind is who an MQTT client is.
type kind int

const (
	kindDevice  kind = iota + 1 // a device or gateway: username = its id
	kindPerson                  // username "token", password = API token
	kindService                 // infrawatch's own identity (ingest, alerts)
)

// String is the metric label of the kind.
func (k kind) String() string {
	switch k {
	case kindDevice:
		return "device"
	case kindPerson:
		return "token"
	case kindService:
		return "service"
	default:
		return "unknown"
	}
}

// identity is an authenticated client.
type identity struct {
	kind kind
	name string // device id; empty for people and the service
	role string // a person's token role
}

// sameOwner reports whether a session held by id may be taken over by
// other (same client id): only by the same principal. People share one
// principal: a token is often rotated while the field app keeps its
// client id and session, and the ACL is re-checked on every delivery with
// the new connection's role anyway.
func (id identity) sameOwner(other identity) bool {
	return id.kind == other.kind && id.name == other.name
}

// Topic prefixes of the ACL.
const (
	alertsPrefix     = "alerts/"
	deadletterPrefix = "infrawatch/deadletter/"
)

// mayPublish reports whether id may publish to topic (a topic name, not a
// filter; it also judges last-will topics, which mochi publishes without
// asking the ACL).
func (id identity) mayPublish(topic string) bool {
	if strings.ContainsAny(topic, "+#\x00") {
		return false
	}
	switch id.kind {
	case kindDevice:
		return under(topic, "devices/"+id.name+"/") || under(topic, "gateways/"+id.name+"/")
	case kindService:
		return under(topic, alertsPrefix) || under(topic, deadletterPrefix)
	default:
		return false
	}
}

// maySubscribe reports whether id may subscribe to filter. Mochi asks it
// both for the filter of a SUBSCRIBE and for the topic of every message
// delivered, so it must give the same answer for a filter and for every
// topic the filter matches. A filter qualifies when a fixed prefix that
// ends in '/' pins it below the allowed subtree; wildcards can only come
// after that prefix, so they cannot widen it.
func (id identity) maySubscribe(filter string) bool {
	switch id.kind {
	case kindService:
		return true
	case kindDevice:
		return under(filter, "devices/"+id.name+"/")
	case kindPerson:
		switch id.role {
		case RoleAdmin:
			return under(filter, alertsPrefix) || under(filter, deadletterPrefix)
		case RoleViewer, RoleOperator:
			return under(filter, alertsPrefix)
		}
	}
	return false
}

// under reports whether s lies strictly below prefix (which ends in '/').
func under(s, prefix string) bool {
	return len(s) > len(prefix) && strings.HasPrefix(s, prefix)
}
