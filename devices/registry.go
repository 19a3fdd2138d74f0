package devices

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
)

// record is one published device, in a compact form: a fleet keeps ~10^5 of
// them. Published records are never modified (a write builds a new record);
// only the reference counts of their interned parts change, under the
// registry's writer lock, and readers never read those.
type record struct {
	// tel is what Lookup hands out; it also holds the device's id, name,
	// labels, location, interval and tags for Get and List. Its Profile is
	// prof's.
	tel              telemetry.Device
	prof             *shared[profile]
	specs            *shared[[]metricSpec] // nil: no metrics
	created, updated int64                 // Unix nanoseconds, UTC; 0 is the zero time
	// The secret's hash is not here: VerifySecret reads it from the store
	// (see Store).
}

// profile is a telemetry.Profile and the interned tag set it holds.
type profile struct {
	p    telemetry.Profile
	tags *shared[map[string]string] // nil: no tags
}

// metricSpec is a MetricSpec without the pointers, kept sorted by name.
type metricSpec struct {
	name, unit     string
	min, max       float64
	hasMin, hasMax bool
}

// snapshot is the registry as readers see it: immutable once published. A
// write publishes a new snapshot that shares everything but the small slices
// it changed (see shardedMap), so a reader always sees one consistent generation
// and a write costs about the same at 100 devices and at 100,000.
type snapshot struct {
	n    int
	byID shardedMap[*record, recordKey]
	// behind maps a gateway id to the ids of its devices, sorted.
	behind shardedMap[gateway, gatewayKey]
}

// gateway is a gateway's id and the ids of the devices behind it, sorted.
type gateway struct {
	id      string
	devices []string
}

type (
	recordKey  struct{}
	gatewayKey struct{}
)

func (recordKey) key(r *record) string  { return r.tel.ID }
func (gatewayKey) key(g gateway) string { return g.id }

func (s *snapshot) get(id string) (*record, bool) { return s.byID.get(id) }

// Registry is the device registry: an in-memory, copy-on-write snapshot in
// front of a Store. Reads (Lookup, Get, List, Count, DevicesBehind) never
// lock, VerifySecret reads the secret's hash from the store, and writes are
// serialised, persisted first and then published.
type Registry struct {
	store Store
	now   func() time.Time

	mu   sync.Mutex // serialises writers and guards the intern tables; readers use snap only
	snap atomic.Pointer[snapshot]

	// Labels, metric specs and tag sets are shared by every device that has
	// the same ones (a device type's thousands of devices usually do), and
	// counted so that one nobody uses any more is dropped. Guarded by mu.
	strs     stringTable
	specSets internTable[[]metricSpec]
	tagSets  internTable[map[string]string]
	profiles internTable[profile]

	// Slots (telemetry.Device.Slot) given back by deletes, and the next
	// never used. Guarded by mu.
	freeSlots []uint32
	nextSlot  uint32
}

func newRegistry(store Store) *Registry {
	r := &Registry{store: store, now: time.Now}
	r.specSets.drop = func(specs []metricSpec) {
		for _, m := range specs {
			r.strs.put(m.name)
			r.strs.put(m.unit)
		}
	}
	r.tagSets.drop = func(tags map[string]string) {
		for k, v := range tags {
			r.strs.put(k)
			r.strs.put(v)
		}
	}
	r.profiles.drop = func(p profile) {
		r.strs.put(p.p.Type)
		r.strs.put(p.p.Domain)
		r.strs.put(p.p.Site)
		r.strs.put(p.p.GatewayID)
		r.tagSets.release(p.tags)
	}
	return r
}

// NewRegistry loads every device from store into memory.
func NewRegistry(ctx context.Context, store Store) (*Registry, error) {
	if store == nil {
		return nil, errors.New("new registry: store is nil")
	}
	recs, err := store.LoadAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("new registry: %w", err)
	}
	reg := newRegistry(store)
	s := &snapshot{}
	for i := range recs {
		r := &recs[i]
		// Checked now, so that a damaged row fails the start, not a
		// device's logins later.
		if _, _, err := parseSecretHash(r.SecretHash); err != nil {
			return nil, fmt.Errorf("new registry: device %q: %w", r.Device.ID, err)
		}
		rec := reg.newRecord(&r.Device)
		recs[i] = Record{} // let the decoded form go as we build
		if prev, dup := s.byID.get(rec.tel.ID); dup {
			rec.tel.Slot = prev.tel.Slot
			reg.release(prev)
		} else {
			rec.tel.Slot = uint32(s.n)
			s.n++
		}
		s.byID.set(rec.tel.ID, rec)
	}
	behind := map[string][]string{}
	for id, rec := range s.byID.all {
		if gw := rec.tel.GatewayID; gw != "" {
			behind[gw] = append(behind[gw], id)
		}
	}
	for gw, ids := range behind {
		slices.Sort(ids)
		s.behind.set(gw, gateway{id: gw, devices: slices.Clip(ids)})
	}
	s.byID.compact()
	s.behind.compact()
	reg.nextSlot = uint32(s.n)
	reg.snap.Store(s)
	return reg, nil
}

// Lookup returns the hot-path view of a device. It takes no lock and does not
// allocate; the returned value is shared and must not be modified.
func (r *Registry) Lookup(id string) (*telemetry.Device, bool) {
	rec, ok := r.snap.Load().get(id)
	if !ok {
		return nil, false
	}
	return &rec.tel, true
}

// VerifySecret reports whether secret is the device's current secret. It is
// false for unknown and retired devices, which it answers from memory; for
// the others it reads the secret's hash from the store, and an error is the
// store's (the login is then refused). The comparison of the salted hashes is
// constant-time.
func (r *Registry) VerifySecret(ctx context.Context, id, secret string) (bool, error) {
	rec, ok := r.snap.Load().get(id)
	if !ok || secret == "" || len(secret) > MaxSecretLen || rec.tel.Lifecycle == telemetry.LifecycleRetired {
		return false, nil
	}
	stored, err := r.store.SecretHash(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil // deleted meanwhile
	}
	if err != nil {
		return false, fmt.Errorf("verify secret: %w", err)
	}
	salt, want, err := parseSecretHash(stored)
	if err != nil {
		return false, fmt.Errorf("verify secret of device %q: %w", id, err)
	}
	sum := secretSum(&salt, secret)
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1, nil
}

// Get returns a copy of a device, without its secret.
func (r *Registry) Get(id string) (Device, error) {
	rec, ok := r.snap.Load().get(id)
	if !ok {
		return Device{}, fmt.Errorf("get device %q: %w", id, ErrNotFound)
	}
	return rec.device(), nil
}

// List returns copies of the devices matching f, sorted by id.
func (r *Registry) List(f Filter) []Device {
	s := r.snap.Load()
	var recs []*record
	for _, rec := range s.byID.all {
		if f.matchTel(&rec.tel) {
			recs = append(recs, rec)
		}
	}
	slices.SortFunc(recs, func(a, b *record) int { return strings.Compare(a.tel.ID, b.tel.ID) })
	out := make([]Device, len(recs))
	for i, rec := range recs {
		out[i] = rec.device()
	}
	return out
}

// Count returns the number of registered devices.
func (r *Registry) Count() int { return r.snap.Load().n }

// Create validates and stores a new device. Missing expected_interval,
// lifecycle and name get defaults. When d.Secret is empty a secret is
// generated; either way the result carries it in Secret, the only time it is
// ever returned. Errors: *ValidationError, ErrExists, or the store's.
func (r *Registry) Create(ctx context.Context, d Device) (Device, error) {
	d = d.clone()
	normalize(&d)
	if err := validate(&d); err != nil {
		return Device{}, err
	}
	secret := d.Secret
	if secret == "" {
		var err error
		if secret, err = generateSecret(); err != nil {
			return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
		}
	}
	d.Secret = ""
	hash, err := hashSecret(secret)
	if err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.snap.Load()
	if _, ok := old.get(d.ID); ok {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, ErrExists)
	}
	now := r.now().UTC()
	d.CreatedAt, d.UpdatedAt = now, now
	if err := r.store.Insert(ctx, Record{Device: d, SecretHash: hash}); err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	r.publish(old, r.newRecord(&d), nil)
	res := d.clone()
	res.Secret = secret
	return res, nil
}

// Update replaces a device (PUT semantics: every field is taken from d, with
// the same defaults as Create; created_at is kept). A non-empty d.Secret
// rotates the secret and is returned in the result; an empty one keeps the
// current secret. Errors: *ValidationError, ErrNotFound, or the store's.
func (r *Registry) Update(ctx context.Context, d Device) (Device, error) {
	d = d.clone()
	normalize(&d)
	if err := validate(&d); err != nil {
		return Device{}, err
	}
	secret := d.Secret
	d.Secret = ""

	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.snap.Load()
	cur, ok := old.get(d.ID)
	if !ok {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, ErrNotFound)
	}
	d.CreatedAt = fromNanos(cur.created)
	d.UpdatedAt = r.now().UTC()
	var hash string // empty: the store keeps the current one
	if secret != "" {
		var err error
		if hash, err = hashSecret(secret); err != nil {
			return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
		}
	}
	if err := r.store.Update(ctx, Record{Device: d, SecretHash: hash}); err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	r.publish(old, r.newRecord(&d), cur)
	res := d.clone()
	res.Secret = secret
	return res, nil
}

// Delete removes a device. Errors: ErrNotFound, or the store's.
func (r *Registry) Delete(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.snap.Load()
	cur, ok := old.get(id)
	if !ok {
		return fmt.Errorf("delete device %q: %w", id, ErrNotFound)
	}
	if err := r.store.Delete(ctx, id); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	r.publish(old, nil, cur)
	return nil
}

// publish swaps in a snapshot with rec added (or replacing prev) or, when rec
// is nil, prev removed. prev's interned parts are released after rec
// acquired its own, so a set both use is kept. Called with mu held.
func (r *Registry) publish(old *snapshot, rec, prev *record) {
	id := prev.id()
	if rec != nil {
		id = rec.tel.ID
	}
	s := &snapshot{n: old.n, behind: old.behind}
	switch {
	case rec == nil:
		s.n--
		r.freeSlots = append(r.freeSlots, prev.tel.Slot)
	case prev == nil:
		s.n++
		rec.tel.Slot = r.takeSlot()
	default:
		rec.tel.Slot = prev.tel.Slot
	}
	s.byID = old.byID.with(id, rec, rec == nil)

	var oldGW, newGW string
	if prev != nil {
		oldGW = prev.tel.GatewayID
	}
	if rec != nil {
		newGW = rec.tel.GatewayID
	}
	if oldGW != newGW {
		// The old id slices belong to older snapshots: Concat copies.
		if oldGW != "" {
			g, _ := s.behind.get(oldGW)
			ids := g.devices
			if i, ok := slices.BinarySearch(ids, id); ok {
				ids = slices.Concat(ids[:i], ids[i+1:])
			}
			s.behind = s.behind.with(oldGW, gateway{id: oldGW, devices: ids}, len(ids) == 0)
		}
		if newGW != "" {
			g, _ := s.behind.get(newGW)
			ids := g.devices
			if i, ok := slices.BinarySearch(ids, id); !ok {
				ids = slices.Concat(ids[:i], []string{id}, ids[i:])
			}
			s.behind = s.behind.with(newGW, gateway{id: newGW, devices: ids}, false)
		}
	}
	r.snap.Store(s)
	if prev != nil {
		r.release(prev)
	}
}

// takeSlot returns a free slot for a new device: the most recently freed,
// else a new one. Called with mu held.
func (r *Registry) takeSlot() uint32 {
	if n := len(r.freeSlots); n > 0 {
		slot := r.freeSlots[n-1]
		r.freeSlots = r.freeSlots[:n-1]
		return slot
	}
	r.nextSlot++
	return r.nextSlot - 1
}

// DevicesBehind returns the ids of the devices whose gateway_id is
// gatewayID, sorted. The alert engine folds their offline and absence alerts
// into the gateway's. It takes no lock; the index is kept up to date by
// every write.
func (r *Registry) DevicesBehind(gatewayID string) []string {
	g, _ := r.snap.Load().behind.get(gatewayID)
	return slices.Clone(g.devices)
}

func (rec *record) id() string {
	if rec == nil {
		return ""
	}
	return rec.tel.ID
}

// newRecord builds the published form of a normalized, valid device. The
// labels shared by many devices (domain, type, site, gateway, tag and metric
// names) are interned, and its metric specs and tag set are shared with
// every device that has the same ones. Called with mu held, or before the
// registry is published.
func (r *Registry) newRecord(d *Device) *record {
	rec := &record{
		tel: telemetry.Device{
			ID:   d.ID,
			Name: d.Name,
		},
		created: toNanos(d.CreatedAt),
		updated: toNanos(d.UpdatedAt),
	}
	if d.Name == d.ID {
		// The default name (and an auto-registered device's): one copy,
		// where a device loaded from the store has two.
		rec.tel.Name = rec.tel.ID
	}
	tk := tagsKey(d.Tags)
	rec.prof = r.profiles.acquire(profileKey(d, tk), func(string) profile {
		p := profile{p: telemetry.Profile{
			Type:      r.strs.get(d.Type),
			Domain:    r.strs.get(d.Domain),
			Site:      r.strs.get(d.Site),
			GatewayID: r.strs.get(d.GatewayID),
			Lifecycle: internLifecycle(d.Lifecycle),
			Interval:  time.Duration(d.ExpectedInterval) * time.Second,
		}}
		if len(d.Tags) > 0 {
			p.tags = r.tagSets.acquire(tk, func(string) map[string]string {
				m := make(map[string]string, len(d.Tags))
				for k, v := range d.Tags {
					m[r.strs.get(k)] = r.strs.get(v)
				}
				return m
			})
			p.p.Tags = p.tags.val
		}
		return p
	})
	rec.tel.Profile = &rec.prof.val.p
	if d.Location != nil {
		rec.tel.Located = true
		rec.tel.Lat, rec.tel.Lon = d.Location.Lat, d.Location.Lon
	}
	if len(d.Metrics) > 0 {
		rec.specs = r.specSets.acquire(specsKey(d.Metrics), func(string) []metricSpec {
			specs := make([]metricSpec, 0, len(d.Metrics))
			for name, m := range d.Metrics {
				ms := metricSpec{name: r.strs.get(name), unit: r.strs.get(m.Unit)}
				if m.Min != nil {
					ms.min, ms.hasMin = *m.Min, true
				}
				if m.Max != nil {
					ms.max, ms.hasMax = *m.Max, true
				}
				specs = append(specs, ms)
			}
			slices.SortFunc(specs, func(a, b metricSpec) int { return strings.Compare(a.name, b.name) })
			return specs
		})
	}
	return rec
}

// release gives back rec's interned parts once it is no longer published.
func (r *Registry) release(rec *record) {
	r.profiles.release(rec.prof)
	r.specSets.release(rec.specs)
}

// device returns a deep copy of rec in the API's form (without secret).
func (rec *record) device() Device {
	t := &rec.tel
	d := Device{
		ID:               t.ID,
		Name:             t.Name,
		Domain:           t.Domain,
		Type:             t.Type,
		Site:             t.Site,
		ExpectedInterval: int(t.Interval / time.Second),
		GatewayID:        t.GatewayID,
		Lifecycle:        t.Lifecycle,
		CreatedAt:        fromNanos(rec.created),
		UpdatedAt:        fromNanos(rec.updated),
	}
	if t.Located {
		d.Location = &Location{Lat: t.Lat, Lon: t.Lon}
	}
	if rec.specs != nil {
		d.Metrics = make(map[string]MetricSpec, len(rec.specs.val))
		for _, ms := range rec.specs.val {
			m := MetricSpec{Unit: ms.unit}
			if ms.hasMin {
				x := ms.min
				m.Min = &x
			}
			if ms.hasMax {
				x := ms.max
				m.Max = &x
			}
			d.Metrics[ms.name] = m
		}
	}
	if t.Tags != nil {
		d.Tags = maps.Clone(t.Tags)
	}
	return d
}

// toNanos and fromNanos keep a timestamp in 8 bytes instead of 24. The
// registry's timestamps are its own clock's, well inside int64 nanoseconds
// (years 1678 to 2262); the zero time stays zero.
func toNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// Secret hashing. Device secrets are random or installer-chosen passwords
// checked on every MQTT connect; a salted SHA-256 keeps a leaked database from
// revealing them or showing which devices share one, while staying cheap
// enough for a reconnect storm of a whole fleet.
const (
	hashScheme = "sha256"
	saltLen    = 16
	secretLen  = 32 // random bytes in a generated secret
)

var b64 = base64.RawURLEncoding

// secretSum is SHA-256(salt || secret). The input is assembled on the stack
// so that a check allocates nothing; callers bound secret by MaxSecretLen.
func secretSum(salt *[saltLen]byte, secret string) [sha256.Size]byte {
	var buf [saltLen + MaxSecretLen]byte
	n := copy(buf[:], salt[:])
	n += copy(buf[n:], secret)
	return sha256.Sum256(buf[:n])
}

// newSecretHash salts and hashes secret with a fresh random salt.
func newSecretHash(secret string) (salt [saltLen]byte, sum [sha256.Size]byte, err error) {
	if _, err := rand.Read(salt[:]); err != nil {
		return salt, sum, fmt.Errorf("generate salt: %w", err)
	}
	return salt, secretSum(&salt, secret), nil
}

// encodeSecretHash returns the stored form, "sha256$<salt>$<sum>".
func encodeSecretHash(salt *[saltLen]byte, sum *[sha256.Size]byte) string {
	return hashScheme + "$" + b64.EncodeToString(salt[:]) + "$" + b64.EncodeToString(sum[:])
}

// hashSecret returns the stored form of secret's hash with a fresh salt.
func hashSecret(secret string) (string, error) {
	salt, sum, err := newSecretHash(secret)
	if err != nil {
		return "", err
	}
	return encodeSecretHash(&salt, &sum), nil
}

func parseSecretHash(s string) (salt [saltLen]byte, sum [sha256.Size]byte, err error) {
	parts := strings.Split(s, "$")
	if len(parts) != 3 || parts[0] != hashScheme {
		return salt, sum, errors.New("malformed secret hash")
	}
	if b, err := b64.DecodeString(parts[1]); err != nil || len(b) != saltLen {
		return salt, sum, fmt.Errorf("malformed secret hash salt: want %d bytes", saltLen)
	} else {
		copy(salt[:], b)
	}
	if b, err := b64.DecodeString(parts[2]); err != nil || len(b) != sha256.Size {
		return salt, sum, errors.New("malformed secret hash sum")
	} else {
		copy(sum[:], b)
	}
	return salt, sum, nil
}

func generateSecret() (string, error) {
	b := make([]byte, secretLen)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return b64.EncodeToString(b), nil
}
