package devices

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

func TestRegistryCRUD(t *testing.T) {
	ctx := context.Background()
	reg, _ := newTestRegistry(t)

	created, err := reg.Create(ctx, validDevice("tc-1"))
	require.NoError(t, err)
	assert.Equal(t, DefaultExpectedInterval, created.ExpectedInterval)
	assert.Equal(t, telemetry.LifecycleActive, created.Lifecycle)
	assert.False(t, created.CreatedAt.IsZero())
	assert.Equal(t, created.CreatedAt, created.UpdatedAt)
	require.NotEmpty(t, created.Secret, "a generated secret is returned once")
	assert.Len(t, created.Secret, 43, "32 random bytes, base64url without padding")
	assert.True(t, verify(t, reg, "tc-1", created.Secret))
	assert.False(t, verify(t, reg, "tc-1", created.Secret+"x"))
	assert.False(t, verify(t, reg, "tc-1", ""))
	assert.False(t, verify(t, reg, "nope", created.Secret))

	got, err := reg.Get("tc-1")
	require.NoError(t, err)
	assert.Empty(t, got.Secret, "the secret is never read back")
	assert.Equal(t, "Traffic counter tc-1", got.Name)

	// The copy handed out is the caller's: changing it changes nothing.
	got.Tags["lane"] = "9"
	*got.Metrics["flow_vph"].Max = -1
	again, _ := reg.Get("tc-1")
	assert.Equal(t, "2", again.Tags["lane"])
	assert.Equal(t, 3000.0, *again.Metrics["flow_vph"].Max)

	_, err = reg.Create(ctx, validDevice("tc-1"))
	assert.ErrorIs(t, err, ErrExists)

	// Create with an installer-chosen secret.
	d2 := validDevice("ws-1")
	d2.Domain, d2.Type, d2.Secret = "roads", "weather_station", "installer-chosen-secret"
	d2.ExpectedInterval = 300
	c2, err := reg.Create(ctx, d2)
	require.NoError(t, err)
	assert.Equal(t, "installer-chosen-secret", c2.Secret)
	assert.True(t, verify(t, reg, "ws-1", "installer-chosen-secret"))

	// Lookup gives the hot-path view.
	td, ok := reg.Lookup("ws-1")
	require.True(t, ok)
	assert.Equal(t, "weather_station", td.Type)
	assert.Equal(t, 300*time.Second, td.Interval)
	assert.Equal(t, 52.52, td.Lat)
	_, ok = reg.Lookup("nope")
	assert.False(t, ok)

	// Update without secret keeps it; PUT semantics otherwise.
	u := validDevice("tc-1")
	u.Name = "renamed"
	u.Lifecycle = telemetry.LifecycleMaintenance
	u.Tags = nil
	time.Sleep(time.Millisecond) // so updated_at visibly moves
	updated, err := reg.Update(ctx, u)
	require.NoError(t, err)
	assert.Empty(t, updated.Secret)
	assert.Equal(t, created.CreatedAt, updated.CreatedAt)
	assert.True(t, updated.UpdatedAt.After(created.UpdatedAt))
	assert.Nil(t, updated.Tags)
	assert.True(t, verify(t, reg, "tc-1", created.Secret), "maintenance devices may still connect")
	td, _ = reg.Lookup("tc-1")
	assert.Equal(t, "renamed", td.Name)
	assert.Equal(t, telemetry.LifecycleMaintenance, td.Lifecycle)

	// Update with a secret rotates it.
	u.Secret = "a-brand-new-secret-123"
	rotated, err := reg.Update(ctx, u)
	require.NoError(t, err)
	assert.Equal(t, "a-brand-new-secret-123", rotated.Secret)
	assert.False(t, verify(t, reg, "tc-1", created.Secret))
	assert.True(t, verify(t, reg, "tc-1", "a-brand-new-secret-123"))

	// Retired devices may not connect.
	u.Secret, u.Lifecycle = "", telemetry.LifecycleRetired
	_, err = reg.Update(ctx, u)
	require.NoError(t, err)
	assert.False(t, verify(t, reg, "tc-1", "a-brand-new-secret-123"))

	_, err = reg.Update(ctx, validDevice("ghost"))
	assert.ErrorIs(t, err, ErrNotFound)

	// List and filters, sorted by id.
	_, err = reg.Create(ctx, Device{ID: "rt-1", Domain: "network", Type: "router", Site: "dc-1"})
	require.NoError(t, err)
	ids := func(ds []Device) []string {
		var out []string
		for _, d := range ds {
			assert.Empty(t, d.Secret)
			out = append(out, d.ID)
		}
		return out
	}
	assert.Equal(t, []string{"rt-1", "tc-1", "ws-1"}, ids(reg.List(Filter{})))
	assert.Equal(t, []string{"tc-1", "ws-1"}, ids(reg.List(Filter{Domain: "roads"})))
	assert.Equal(t, []string{"ws-1"}, ids(reg.List(Filter{Type: "weather_station"})))
	assert.Equal(t, []string{"rt-1"}, ids(reg.List(Filter{Site: "dc-1", Domain: "network"})))
	assert.Empty(t, reg.List(Filter{Site: "nowhere"}))
	assert.Equal(t, 3, reg.Count())

	require.NoError(t, reg.Delete(ctx, "rt-1"))
	assert.ErrorIs(t, reg.Delete(ctx, "rt-1"), ErrNotFound)
	_, err = reg.Get("rt-1")
	assert.ErrorIs(t, err, ErrNotFound)
	_, ok = reg.Lookup("rt-1")
	assert.False(t, ok)
	assert.Equal(t, 2, reg.Count())
}

func TestRegistryValidation(t *testing.T) {
	long := strings.Repeat("x", 65)
	tests := []struct {
		name   string
		mutate func(d *Device)
		fields []string // the invalid fields reported; nil means valid
	}{
		{"valid", func(d *Device) {}, nil},
		{"defaults", func(d *Device) { d.Name, d.Location, d.Metrics, d.Tags = "", nil, nil, nil }, nil},
		{"empty id", func(d *Device) { d.ID = "" }, []string{"id"}},
		{"id with slash", func(d *Device) { d.ID = "a/b" }, []string{"id"}},
		{"id wildcard", func(d *Device) { d.ID = "a+" }, []string{"id"}},
		{"id too long", func(d *Device) { d.ID = long }, []string{"id"}},
		{"id 64 ok", func(d *Device) { d.ID = long[:64] }, nil},
		{"reserved id", func(d *Device) { d.ID = "token" }, []string{"id"}},
		{"reserved id any case", func(d *Device) { d.ID = "InfraWatch" }, []string{"id"}},
		{"name newline", func(d *Device) { d.Name = "a\nb" }, []string{"name"}},
		{"missing domain type site", func(d *Device) { d.Domain, d.Type, d.Site = "", "", "" }, []string{"domain", "type", "site"}},
		{"upper domain", func(d *Device) { d.Domain = "Roads" }, []string{"domain"}},
		{"type with dash", func(d *Device) { d.Type = "traffic-counter" }, []string{"type"}},
		{"type leading digit", func(d *Device) { d.Type = "1counter" }, []string{"type"}},
		{"site with space", func(d *Device) { d.Site = "a1 km12" }, []string{"site"}},
		{"site with slash", func(d *Device) { d.Site = "a1/km12" }, []string{"site"}},
		{"lat out of range", func(d *Device) { d.Location = &Location{Lat: 91, Lon: 0} }, []string{"location.lat"}},
		{"lon out of range", func(d *Device) { d.Location = &Location{Lat: 0, Lon: -181} }, []string{"location.lon"}},
		{"lat NaN", func(d *Device) { d.Location = &Location{Lat: math.NaN()} }, []string{"location.lat"}},
		{"negative interval", func(d *Device) { d.ExpectedInterval = -5 }, []string{"expected_interval"}},
		{"interval too long", func(d *Device) { d.ExpectedInterval = MaxExpectedInterval + 1 }, []string{"expected_interval"}},
		{"bad metric name", func(d *Device) { d.Metrics = map[string]MetricSpec{"Flow": {}} }, []string{"metrics.Flow"}},
		{"metric min > max", func(d *Device) {
			lo, hi := 5.0, 1.0
			d.Metrics = map[string]MetricSpec{"flow": {Min: &lo, Max: &hi}}
		}, []string{"metrics.flow"}},
		{"metric infinite", func(d *Device) {
			inf := math.Inf(1)
			d.Metrics = map[string]MetricSpec{"flow": {Max: &inf}}
		}, []string{"metrics.flow"}},
		{"tag value newline", func(d *Device) { d.Tags = map[string]string{"k": "a\nb"} }, []string{"tags.k"}},
		{"tag key too long", func(d *Device) { d.Tags = map[string]string{strings.Repeat("k", 65): "v"} }, []string{"tags." + strings.Repeat("k", 65)}},
		{"tag empty key", func(d *Device) { d.Tags = map[string]string{"": "v"} }, []string{"tags"}},
		{"bad gateway", func(d *Device) { d.GatewayID = "gw/1" }, []string{"gateway_id"}},
		{"self gateway", func(d *Device) { d.GatewayID = d.ID }, []string{"gateway_id"}},
		{"good gateway", func(d *Device) { d.GatewayID = "gw-1" }, nil},
		{"bad lifecycle", func(d *Device) { d.Lifecycle = "broken" }, []string{"lifecycle"}},
		{"short secret", func(d *Device) { d.Secret = "short" }, []string{"secret"}},
		{"secret control char", func(d *Device) { d.Secret = "0123456789abcdef\x00" }, []string{"secret"}},
		{"many at once", func(d *Device) { d.ID, d.Type, d.Lifecycle = "", "X", "x" }, []string{"id", "type", "lifecycle"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newMemRegistry(t)
			d := validDevice("dev-1")
			tt.mutate(&d)
			_, err := reg.Create(context.Background(), d)
			if tt.fields == nil {
				require.NoError(t, err)
				return
			}
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			var got []string
			for f := range verr.Fields {
				got = append(got, f)
			}
			assert.ElementsMatch(t, tt.fields, got, "error: %v", err)
			assert.Equal(t, 0, reg.Count(), "nothing stored on a validation error")
		})
	}
}

func TestRegistryRestart(t *testing.T) {
	ctx := context.Background()
	db, path := openTestDB(t)
	store, err := NewSQLiteStore(ctx, db)
	require.NoError(t, err)
	reg, err := NewRegistry(ctx, store)
	require.NoError(t, err)

	a, err := reg.Create(ctx, validDevice("tc-1"))
	require.NoError(t, err)
	b, err := reg.Create(ctx, validDevice("tc-2"))
	require.NoError(t, err)
	_, err = reg.Create(ctx, validDevice("tc-3"))
	require.NoError(t, err)
	upd := validDevice("tc-2")
	upd.Secret = "rotated-secret-0123456789"
	upd.Name = "second"
	_, err = reg.Update(ctx, upd)
	require.NoError(t, err)
	require.NoError(t, reg.Delete(ctx, "tc-3"))
	require.NoError(t, db.Close())

	db2, err := OpenDB(path)
	require.NoError(t, err)
	defer db2.Close()
	store2, err := NewSQLiteStore(ctx, db2)
	require.NoError(t, err)
	reg2, err := NewRegistry(ctx, store2)
	require.NoError(t, err)

	assert.Equal(t, 2, reg2.Count())
	assert.True(t, verify(t, reg2, "tc-1", a.Secret))
	assert.False(t, verify(t, reg2, "tc-2", b.Secret))
	assert.True(t, verify(t, reg2, "tc-2", "rotated-secret-0123456789"))
	got, err := reg2.Get("tc-2")
	require.NoError(t, err)
	assert.Equal(t, "second", got.Name)
	assert.Equal(t, b.CreatedAt.UTC(), got.CreatedAt.UTC())
	assert.Equal(t, map[string]string{"lane": "2", "direction": "north"}, got.Tags)
	assert.Equal(t, 3000.0, *got.Metrics["flow_vph"].Max)
	_, err = reg2.Get("tc-3")
	assert.ErrorIs(t, err, ErrNotFound)

	// The secret never reaches the database in clear.
	var doc, hash string
	require.NoError(t, db2.QueryRow(`SELECT doc, secret_hash FROM devices WHERE id = 'tc-1'`).Scan(&doc, &hash))
	assert.NotContains(t, doc, a.Secret)
	assert.NotContains(t, hash, a.Secret)
	assert.True(t, strings.HasPrefix(hash, "sha256$"))
}

// failingStore fails every write, to show a failed write publishes nothing.
type failingStore struct{ *memStore }

var errDisk = errors.New("disk full")

func (failingStore) Insert(context.Context, Record) error { return errDisk }
func (failingStore) Update(context.Context, Record) error { return errDisk }
func (failingStore) Delete(context.Context, string) error { return errDisk }

func TestRegistryStoreFailurePublishesNothing(t *testing.T) {
	ctx := context.Background()
	ms := &memStore{recs: map[string]Record{}}
	reg, err := NewRegistry(ctx, ms)
	require.NoError(t, err)
	_, err = reg.Create(ctx, validDevice("tc-1"))
	require.NoError(t, err)
	reg.store = failingStore{ms}

	_, err = reg.Create(ctx, validDevice("tc-2"))
	assert.ErrorIs(t, err, errDisk)
	_, ok := reg.Lookup("tc-2")
	assert.False(t, ok)

	u := validDevice("tc-1")
	u.Name = "changed"
	_, err = reg.Update(ctx, u)
	assert.ErrorIs(t, err, errDisk)
	got, _ := reg.Get("tc-1")
	assert.Equal(t, "Traffic counter tc-1", got.Name)

	assert.ErrorIs(t, reg.Delete(ctx, "tc-1"), errDisk)
	assert.Equal(t, 1, reg.Count())
}

// TestLookupConcurrentWithWrites runs readers on the lock-free paths while
// writers update and create devices; run with -race.
func TestLookupConcurrentWithWrites(t *testing.T) {
	ctx := context.Background()
	reg, _ := newTestRegistry(t)
	for i := range 20 {
		_, err := reg.Create(ctx, validDevice("tc-"+itoa(i)))
		require.NoError(t, err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := range 20 {
					d, ok := reg.Lookup("tc-" + itoa(i))
					if !ok || d.Type == "" || d.Tags["lane"] == "" {
						t.Errorf("lookup tc-%d: %v %+v", i, ok, d)
						return
					}
				}
				_, _ = reg.VerifySecret(context.Background(), "tc-1", "whatever-secret-0000")
				_ = reg.List(Filter{Domain: "roads"})
			}
		})
	}
	wg.Go(func() {
		for n := range 50 {
			d := validDevice("tc-" + itoa(n%20))
			d.Name = "rev " + itoa(n)
			d.Tags["lane"] = itoa(n)
			if _, err := reg.Update(ctx, d); err != nil {
				t.Errorf("update: %v", err)
			}
			if _, err := reg.Create(ctx, validDevice("new-"+itoa(n))); err != nil {
				t.Errorf("create: %v", err)
			}
		}
	})
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	assert.Equal(t, 70, reg.Count())
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestDevicesBehind(t *testing.T) {
	ctx := context.Background()
	reg, err := NewRegistry(ctx, &memStore{recs: map[string]Record{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []Device{
		{ID: "gw-1", Domain: "roads", Type: "gateway", Site: "s1"},
		{ID: "tc-2", Domain: "roads", Type: "traffic_counter", Site: "s1", GatewayID: "gw-1"},
		{ID: "tc-1", Domain: "roads", Type: "traffic_counter", Site: "s1", GatewayID: "gw-1"},
		{ID: "tc-3", Domain: "roads", Type: "traffic_counter", Site: "s1"},
	} {
		if _, err := reg.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if got := reg.DevicesBehind("gw-1"); !slices.Equal(got, []string{"tc-1", "tc-2"}) {
		t.Fatalf("DevicesBehind(gw-1) = %v", got)
	}
	if err := reg.Delete(ctx, "tc-1"); err != nil {
		t.Fatal(err)
	}
	if got := reg.DevicesBehind("gw-1"); !slices.Equal(got, []string{"tc-2"}) {
		t.Fatalf("after delete: %v", got)
	}
	if got := reg.DevicesBehind("tc-3"); len(got) != 0 {
		t.Fatalf("not a gateway: %v", got)
	}
}

// TestRegistrySharing checks what keeps a fleet small: devices with the same
// tags share one map, labels share one copy, and the reference-counted
// tables and the gateway index follow every write back to empty.
func TestRegistrySharing(t *testing.T) {
	ctx := context.Background()
	reg := newMemRegistry(t)
	mk := func(id, gw, lane string) Device {
		d := validDevice(id)
		d.GatewayID = gw
		d.Tags = map[string]string{"lane": lane}
		return d
	}
	for _, d := range []Device{mk("a", "gw-1", "1"), mk("b", "gw-1", "1"), mk("c", "gw-2", "2")} {
		_, err := reg.Create(ctx, d)
		require.NoError(t, err)
	}
	tel := func(id string) *telemetry.Device {
		d, ok := reg.Lookup(id)
		require.True(t, ok, id)
		return d
	}
	sameMap := func(a, b map[string]string) bool {
		return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
	}
	assert.True(t, sameMap(tel("a").Tags, tel("b").Tags), "equal tag sets are one map")
	assert.False(t, sameMap(tel("a").Tags, tel("c").Tags))
	assert.Equal(t, unsafe.StringData(tel("a").Site), unsafe.StringData(tel("c").Site), "labels are interned")
	assert.Same(t, tel("a").Profile, tel("b").Profile, "devices with the same labels share one profile")
	assert.NotSame(t, tel("a").Profile, tel("c").Profile)
	assert.Len(t, reg.profiles.m, 2)
	assert.Equal(t, []string{"a", "b"}, reg.DevicesBehind("gw-1"))
	assert.Equal(t, []string{"c"}, reg.DevicesBehind("gw-2"))

	// Move b to gw-2 with c's tags; a keeps its gateway.
	_, err := reg.Update(ctx, mk("b", "gw-2", "2"))
	require.NoError(t, err)
	_, err = reg.Update(ctx, mk("a", "gw-1", "1"))
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, reg.DevicesBehind("gw-1"))
	assert.Equal(t, []string{"b", "c"}, reg.DevicesBehind("gw-2"))
	assert.True(t, sameMap(tel("b").Tags, tel("c").Tags))
	assert.Same(t, tel("b").Profile, tel("c").Profile, "b moved into c's profile")
	assert.Equal(t, "gw-1", tel("a").GatewayID, "a's profile is untouched by b's move")
	assert.Len(t, reg.profiles.m, 2)
	assert.Len(t, reg.tagSets.m, 2)
	assert.Len(t, reg.specSets.m, 1)
	got, err := reg.Get("b")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"lane": "2"}, got.Tags)
	got.Tags["lane"] = "9" // a copy: the shared set is untouched
	assert.Equal(t, "2", tel("c").Tags["lane"])

	// Ungated, then gone: every table drains.
	_, err = reg.Update(ctx, mk("c", "", "2"))
	require.NoError(t, err)
	assert.Equal(t, []string{"b"}, reg.DevicesBehind("gw-2"))
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, reg.Delete(ctx, id))
	}
	assert.Empty(t, reg.DevicesBehind("gw-1"))
	assert.Empty(t, reg.DevicesBehind("gw-2"))
	assert.Empty(t, reg.strs.m)
	assert.Empty(t, reg.tagSets.m)
	assert.Empty(t, reg.specSets.m)
	assert.Empty(t, reg.profiles.m)
	assert.Equal(t, 0, reg.Count())
	assert.Empty(t, reg.List(Filter{}))

	// A write the store refuses interns nothing.
	reg.store = failingStore{&memStore{recs: map[string]Record{}}}
	_, err = reg.Create(ctx, mk("d", "gw-3", "3"))
	require.ErrorIs(t, err, errDisk)
	assert.Empty(t, reg.strs.m)
	assert.Empty(t, reg.profiles.m)
}

// TestRegistryManyDevices exercises the sharded snapshot past one small map
// per shard: every device is found, listed in order and removable.
func TestRegistryManyDevices(t *testing.T) {
	ctx := context.Background()
	reg := newMemRegistry(t)
	const n = 5000
	for i := range n {
		_, err := reg.Create(ctx, Device{ID: "d-" + itoa(i), Domain: "roads", Type: "t", Site: "s"})
		require.NoError(t, err)
	}
	assert.Equal(t, n, reg.Count())
	list := reg.List(Filter{})
	require.Len(t, list, n)
	assert.True(t, slices.IsSortedFunc(list, func(a, b Device) int { return strings.Compare(a.ID, b.ID) }))
	for i := 0; i < n; i += 2 {
		require.NoError(t, reg.Delete(ctx, "d-"+itoa(i)))
	}
	assert.Equal(t, n/2, reg.Count())
	for i := range n {
		_, ok := reg.Lookup("d-" + itoa(i))
		assert.Equal(t, i%2 == 1, ok, i)
	}
}

// TestRegistrySlots: every registered device has a slot no other registered
// device has; an update keeps it, a delete frees it for the next device, a
// failed write takes none, and a registry loaded from its store numbers its
// devices from 0, so slots stay below the most devices registered at once.
func TestRegistrySlots(t *testing.T) {
	ctx := context.Background()
	reg := newMemRegistry(t)
	slot := func(id string) uint32 {
		d, ok := reg.Lookup(id)
		require.True(t, ok, id)
		return d.Slot
	}
	for i := range 5 {
		_, err := reg.Create(ctx, validDevice(fmt.Sprintf("d%d", i)))
		require.NoError(t, err)
		assert.Equal(t, uint32(i), slot(fmt.Sprintf("d%d", i)))
	}
	upd := validDevice("d2")
	upd.Site = "elsewhere"
	upd.Location = nil
	_, err := reg.Update(ctx, upd)
	require.NoError(t, err)
	assert.Equal(t, uint32(2), slot("d2"), "an update keeps the slot")
	d2, _ := reg.Lookup("d2")
	assert.False(t, d2.Located)
	d1, _ := reg.Lookup("d1")
	assert.True(t, d1.Located)
	assert.Equal(t, 52.52, d1.Lat)

	require.NoError(t, reg.Delete(ctx, "d1"))
	require.NoError(t, reg.Delete(ctx, "d3"))
	_, err = reg.Create(ctx, validDevice("n1"))
	require.NoError(t, err)
	_, err = reg.Create(ctx, validDevice("n2"))
	require.NoError(t, err)
	_, err = reg.Create(ctx, validDevice("n3"))
	require.NoError(t, err)
	assert.Equal(t, []uint32{3, 1}, []uint32{slot("n1"), slot("n2")}, "freed slots are taken first, the last freed first")
	assert.Equal(t, uint32(5), slot("n3"))

	store := reg.store
	reg.store = failingStore{&memStore{recs: map[string]Record{}}}
	_, err = reg.Create(ctx, validDevice("x"))
	require.ErrorIs(t, err, errDisk)
	reg.store = store
	_, err = reg.Create(ctx, validDevice("n4"))
	require.NoError(t, err)
	assert.Equal(t, uint32(6), slot("n4"), "a failed create took no slot")

	seen := map[uint32]string{}
	for _, d := range reg.List(Filter{}) {
		s := slot(d.ID)
		require.NotContains(t, seen, s, "slot of %s and %s", d.ID, seen[s])
		seen[s] = d.ID
	}

	reloaded, err := NewRegistry(ctx, store)
	require.NoError(t, err)
	got := map[uint32]bool{}
	for _, d := range reloaded.List(Filter{}) {
		td, _ := reloaded.Lookup(d.ID)
		got[td.Slot] = true
	}
	want := map[uint32]bool{}
	for i := range reloaded.Count() {
		want[uint32(i)] = true
	}
	assert.Equal(t, want, got, "a loaded registry numbers its devices 0..n-1")
	_, err = reloaded.Create(ctx, validDevice("after-load"))
	require.NoError(t, err)
	td, _ := reloaded.Lookup("after-load")
	assert.Equal(t, uint32(reloaded.Count()-1), td.Slot)
}
