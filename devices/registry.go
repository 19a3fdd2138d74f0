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

// record is one published device. Published records are never modified: a
// write builds new records and a new snapshot.
type record struct {
	dev        Device // Secret always empty
	tel        *telemetry.Device
	secretHash string // encoded form, as stored
	salt, sum  []byte
}

// snapshot is the registry as readers see it: immutable once published.
type snapshot struct {
	byID   map[string]*record
	sorted []*record // by id, for List

	// behind maps a gateway id to the devices assigned to it; built on first
	// use per snapshot, since only alert folding asks and writes are rare.
	behindOnce sync.Once
	behind     map[string][]string
}

// Registry is the device registry: an in-memory, copy-on-write snapshot in
// front of a Store. Reads (Lookup, VerifySecret, Get, List, Count) never lock;
// writes are serialised, persisted first and then published.
type Registry struct {
	store Store
	now   func() time.Time

	mu   sync.Mutex // serialises writers; readers use snap only
	snap atomic.Pointer[snapshot]
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
	s := &snapshot{byID: make(map[string]*record, len(recs))}
	for _, r := range recs {
		rec, err := newRecord(r.Device, r.SecretHash)
		if err != nil {
			return nil, fmt.Errorf("new registry: device %q: %w", r.Device.ID, err)
		}
		s.byID[rec.dev.ID] = rec
	}
	s.sort()
	reg := &Registry{store: store, now: time.Now}
	reg.snap.Store(s)
	return reg, nil
}

// Lookup returns the hot-path view of a device. It takes no lock and does not
// allocate; the returned value is shared and must not be modified.
func (r *Registry) Lookup(id string) (*telemetry.Device, bool) {
	rec, ok := r.snap.Load().byID[id]
	if !ok {
		return nil, false
	}
	return rec.tel, true
}

// VerifySecret reports whether secret is the device's current secret. It is
// false for unknown and retired devices. The comparison of the salted hashes
// is constant-time.
func (r *Registry) VerifySecret(id, secret string) bool {
	rec, ok := r.snap.Load().byID[id]
	if !ok || secret == "" {
		return false
	}
	sum := secretSum(rec.salt, secret)
	match := subtle.ConstantTimeCompare(sum[:], rec.sum) == 1
	return match && rec.dev.Lifecycle != telemetry.LifecycleRetired
}

// Get returns a copy of a device, without its secret.
func (r *Registry) Get(id string) (Device, error) {
	rec, ok := r.snap.Load().byID[id]
	if !ok {
		return Device{}, fmt.Errorf("get device %q: %w", id, ErrNotFound)
	}
	return rec.dev.clone(), nil
}

// List returns copies of the devices matching f, sorted by id.
func (r *Registry) List(f Filter) []Device {
	s := r.snap.Load()
	out := make([]Device, 0, len(s.sorted))
	for _, rec := range s.sorted {
		if f.Match(&rec.dev) {
			out = append(out, rec.dev.clone())
		}
	}
	return out
}

// Count returns the number of registered devices.
func (r *Registry) Count() int { return len(r.snap.Load().byID) }

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

	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.snap.Load()
	if _, ok := old.byID[d.ID]; ok {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, ErrExists)
	}
	now := r.now().UTC()
	d.CreatedAt, d.UpdatedAt = now, now
	encoded, err := hashSecret(secret)
	if err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	rec, err := newRecord(d, encoded)
	if err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	if err := r.store.Insert(ctx, Record{Device: d, SecretHash: encoded}); err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	r.publish(old, rec, "")
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
	cur, ok := old.byID[d.ID]
	if !ok {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, ErrNotFound)
	}
	d.CreatedAt = cur.dev.CreatedAt
	d.UpdatedAt = r.now().UTC()
	encoded := cur.secretHash
	if secret != "" {
		var err error
		if encoded, err = hashSecret(secret); err != nil {
			return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
		}
	}
	rec, err := newRecord(d, encoded)
	if err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	if err := r.store.Update(ctx, Record{Device: d, SecretHash: encoded}); err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", d.ID, err)
	}
	r.publish(old, rec, "")
	res := d.clone()
	res.Secret = secret
	return res, nil
}

// Delete removes a device. Errors: ErrNotFound, or the store's.
func (r *Registry) Delete(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.snap.Load()
	if _, ok := old.byID[id]; !ok {
		return fmt.Errorf("delete device %q: %w", id, ErrNotFound)
	}
	if err := r.store.Delete(ctx, id); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	r.publish(old, nil, id)
	return nil
}

// publish swaps in a copy of old with rec added (or replaced) and del removed.
// Copying the whole map makes a write O(n), which is the price of lock-free
// reads; registry writes are rare next to readings. Called with mu held.
func (r *Registry) publish(old *snapshot, rec *record, del string) {
	s := &snapshot{byID: maps.Clone(old.byID), sorted: slices.Clone(old.sorted)}
	if rec != nil {
		id := rec.dev.ID
		s.byID[id] = rec
		if i, found := slices.BinarySearchFunc(s.sorted, id, cmpID); found {
			s.sorted[i] = rec
		} else {
			s.sorted = slices.Insert(s.sorted, i, rec)
		}
	}
	if del != "" {
		delete(s.byID, del)
		if i, found := slices.BinarySearchFunc(s.sorted, del, cmpID); found {
			s.sorted = slices.Delete(s.sorted, i, i+1)
		}
	}
	r.snap.Store(s)
}

// DevicesBehind returns the ids of the devices whose gateway_id is
// gatewayID, sorted. The alert engine folds their offline and absence alerts
// into the gateway's. It takes no lock; the index is built once per snapshot.
func (r *Registry) DevicesBehind(gatewayID string) []string {
	s := r.snap.Load()
	s.behindOnce.Do(func() {
		s.behind = make(map[string][]string)
		for _, rec := range s.sorted {
			if gw := rec.dev.GatewayID; gw != "" {
				s.behind[gw] = append(s.behind[gw], rec.dev.ID)
			}
		}
	})
	return slices.Clone(s.behind[gatewayID])
}

func cmpID(rec *record, id string) int { return strings.Compare(rec.dev.ID, id) }

func (s *snapshot) sort() {
	s.sorted = make([]*record, 0, len(s.byID))
	for _, rec := range s.byID {
		s.sorted = append(s.sorted, rec)
	}
	slices.SortFunc(s.sorted, func(a, b *record) int { return strings.Compare(a.dev.ID, b.dev.ID) })
}

func newRecord(d Device, encodedHash string) (*record, error) {
	salt, sum, err := parseSecretHash(encodedHash)
	if err != nil {
		return nil, err
	}
	d.Secret = ""
	d = d.clone()
	return &record{dev: d, tel: telemetryDevice(&d), secretHash: encodedHash, salt: salt, sum: sum}, nil
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

func secretSum(salt []byte, secret string) [sha256.Size]byte {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte(secret))
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// hashSecret returns "sha256$<salt>$<sum>" with a fresh random salt.
func hashSecret(secret string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("generate salt: %w", err)
	}
	sum := secretSum(salt, secret)
	return hashScheme + "$" + b64.EncodeToString(salt) + "$" + b64.EncodeToString(sum[:]), nil
}

func parseSecretHash(s string) (salt, sum []byte, err error) {
	parts := strings.Split(s, "$")
	if len(parts) != 3 || parts[0] != hashScheme {
		return nil, nil, errors.New("malformed secret hash")
	}
	if salt, err = b64.DecodeString(parts[1]); err != nil {
		return nil, nil, fmt.Errorf("malformed secret hash salt: %w", err)
	}
	if sum, err = b64.DecodeString(parts[2]); err != nil || len(sum) != sha256.Size {
		return nil, nil, errors.New("malformed secret hash sum")
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
