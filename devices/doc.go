// Package devices owns the device registry and the devices' live state.
//
// The registry (Registry) is the source of truth for which devices exist,
// how their readings are tagged and who may publish for them. It is kept in
// memory as an immutable snapshot swapped atomically on every write, so the
// ingest hot path (Lookup) never takes a lock; writes go through a Store
// (SQLite today) before they are published. Secret hashes stay in the
// store: broker authentication (VerifySecret) reads one per login. The snapshot is split into small maps (shardmap.go) so that a
// write copies one of them, not the whole registry, and devices share their
// labels, tag sets and metric specs (intern.go), which is what keeps a fleet
// of 100,000 devices to a few hundred bytes each.
//
// Live (Live) keeps each device's latest value per metric and its status
// (unknown, online, stale, offline), in arrays indexed by the registry's
// device slots, updated by ingest per reading with a per-device lock only,
// and emits a StatusEvent on every status change.
package devices
