package telemetry

import "time"

// ValidID reports whether id is a well-formed device or gateway id, MQTT
// username or client id: ^[A-Za-z0-9_-]{1,64}$, nothing that could act as
// a topic wildcard or level, break line protocol, or need escaping in a
// Flux regex literal. Written on bytes, not as a regexp: it runs for every
// CONNECT and every gateway message's device ids, and must be exact on
// bytes (NUL and invalid UTF-8 fail).
func ValidID[T string | []byte](id T) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Value is one metric of a reading: a finite number or a boolean.
type Value struct {
	Name   string
	Num    float64 // valid when !IsBool
	Bool   bool    // valid when IsBool
	IsBool bool
}

// Float returns the value as a number; booleans are 1 or 0 so that rules and
// aggregates can treat them uniformly.
func (v Value) Float() float64 {
	if v.IsBool {
		if v.Bool {
			return 1
		}
		return 0
	}
	return v.Num
}

// Reading is one accepted, validated reading of one device.
type Reading struct {
	DeviceID string
	Time     time.Time
	Values   []Value
	// Device is the device's registry entry when the producer looked it
	// up (ingest does, for every message), so that consumers on the hot
	// path need not look it up again; nil when unknown. It is the entry as
	// the reading arrived (the stream hub keeps it as such, for where the
	// event was published); a consumer that acts on a reading later and
	// needs the current entry (the alert engine, after its reorder window)
	// looks it up then.
	Device *Device
}

// Lifecycle states of a device in the registry.
const (
	LifecycleActive      = "active"
	LifecycleMaintenance = "maintenance"
	LifecycleRetired     = "retired"
)

// Device is the registry metadata that the hot path needs: what to tag a
// point with and who may publish for the device. It is immutable once
// published by the registry; a change to a device publishes a new value.
//
// What many devices have in common is in a Profile that they share, so that a
// device costs its id, name and location, not its labels again: a fleet
// keeps ~10^5 of these in memory. Profile is never nil in a Device the
// registry hands out; its fields read as the Device's own (d.Site).
type Device struct {
	ID       string
	Name     string
	Lat, Lon float64 // valid when Located
	*Profile
	// Slot is a small number the registry gives each device it holds:
	// unique among the devices registered at one time, kept by an update,
	// and reused by a later device once this one is deleted, so it stays
	// below the largest number of devices registered at once. Consumers
	// index per-device arrays by it instead of hashing the id; one that
	// keeps state across a delete must check the id too.
	Slot    uint32
	Located bool
}

// Profile is the part of a Device that devices of the same type at the same
// site usually share. Immutable, like the Device.
type Profile struct {
	Type      string // InfluxDB measurement
	Domain    string
	Site      string
	GatewayID string
	Lifecycle string
	Tags      map[string]string
	// Interval is the expected time between readings; zero means unknown.
	Interval time.Duration
}

// Consumer receives the readings ingest accepted from one MQTT message.
// Consume is called on ingest's goroutines: it must not block, and it must
// not keep the slice or the readings' Values after it returns (copy what it
// keeps), because ingest reuses them.
type Consumer interface {
	Consume(readings []Reading)
}

// StatusEvent reports that a device's live status changed.
type StatusEvent struct {
	DeviceID string
	Status   string // online, stale, offline
	Previous string
	Time     time.Time
}

// Live statuses of a device.
const (
	StatusOnline  = "online"
	StatusStale   = "stale"
	StatusOffline = "offline"
	StatusUnknown = "unknown" // registered, never heard from
)
