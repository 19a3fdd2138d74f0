package devices

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/telemetry"
)

// Fleet-scale measurements (see /work/notes/DEVICES_PERF.md). They use only
// the public API and the test stores below, so that the same file measures
// any version of the package.

// discardStore persists nothing: what a create costs in the registry itself.
type discardStore struct{}

func (discardStore) LoadAll(context.Context) ([]Record, error) { return nil, nil }
func (discardStore) Insert(context.Context, Record) error      { return nil }
func (discardStore) Update(context.Context, Record) error      { return nil }
func (discardStore) Delete(context.Context, string) error      { return nil }
func (discardStore) SecretHash(context.Context, string) (string, error) {
	return "", ErrNotFound
}

// genStore loads n generated devices the way SQLiteStore.LoadAll does, each
// decoded from its own JSON document (so no two devices share a string unless
// the registry makes them), and keeps nothing itself.
type genStore struct {
	discardStore
	n int
}

func (g genStore) LoadAll(context.Context) ([]Record, error) {
	out := make([]Record, g.n)
	for i := range out {
		d := fleetDevice(i)
		var err error
		if out[i].SecretHash, err = hashSecret("fleet-secret-0123456789"); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(fleetDoc(d), &out[i].Device); err != nil {
			return nil, err
		}
		out[i].Device.CreatedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
		out[i].Device.UpdatedAt = out[i].Device.CreatedAt
	}
	return out, nil
}

// fleetDevice is device i of a plausible fleet: two types, 1,000 sites, tags
// from a small set, every other device behind one of 500 gateways.
func fleetDevice(i int) Device {
	d := validDevice("dev-" + strconv.Itoa(i))
	d.Site = "site-" + strconv.Itoa(i%1000)
	if i%2 == 1 {
		d.Type = "weather_station"
		lo := -40.0
		d.Metrics = map[string]MetricSpec{
			"air_temp_c":  {Unit: "°C", Min: &lo},
			"ice_warning": {},
			"wind_ms":     {Unit: "m/s"},
		}
		d.GatewayID = "gw-" + strconv.Itoa(i%500)
	}
	d.Tags = map[string]string{"lane": strconv.Itoa(1 + i%4), "direction": []string{"north", "south"}[i%2]}
	return d
}

func fleetDoc(d Device) []byte {
	b, err := json.Marshal(d)
	if err != nil {
		panic(err)
	}
	return b
}

// fleetReading is one reading of 3 metrics for device i, with names in fresh
// memory as a decoder would produce them.
func fleetReading(i int, ts time.Time) telemetry.Reading {
	fresh := func(s string) string { return string([]byte(s)) }
	return telemetry.Reading{DeviceID: fresh("dev-" + strconv.Itoa(i)), Time: ts, Values: []telemetry.Value{
		{Name: fresh("flow_vph"), Num: float64(i % 3000)},
		{Name: fresh("speed_kmh"), Num: 54.5},
		{Name: fresh("ice_warning"), IsBool: true},
	}}
}

func envInt(t *testing.T, name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, name)
		return n
	}
	return def
}

// TestMemoryPerDevice measures the live heap that one registered device
// costs, in the registry and in Live with one reading of 3 metrics, at
// DEVICES_MEM_N devices (default 100,000). "load" is the start-up path (every
// device decoded from its stored JSON); "create" provisions the same fleet
// through Create (DEVICES_MEM_CREATE_N, default the same n; 0 skips it) and
// also reports the provisioning time.
func TestMemoryPerDevice(t *testing.T) {
	if testing.Short() || testenv.RaceEnabled {
		t.Skip("fleet-scale measurement; skipped with -short and -race")
	}
	n := envInt(t, "DEVICES_MEM_N", 100_000)
	nCreate := envInt(t, "DEVICES_MEM_CREATE_N", n)
	ctx := context.Background()
	// build returns the registry and the time spent in the registry itself.
	measure := func(t *testing.T, path string, n int, build func() (*Registry, time.Duration)) int {
		base := testenv.HeapAfterGC()
		reg, buildTime := build()
		require.Equal(t, n, reg.Count())
		afterReg := testenv.HeapAfterGC()
		live := NewLive(LiveOptions{Lookup: reg.Lookup, Registered: reg.Count})
		ts := time.Now()
		for i := range n {
			live.Consume([]telemetry.Reading{fleetReading(i, ts)})
		}
		afterLive := testenv.HeapAfterGC()
		st, ok := live.Get("dev-" + strconv.Itoa(n-1))
		require.True(t, ok)
		require.Len(t, st.Metrics, 3)
		regPer := (float64(afterReg) - float64(base)) / float64(n)
		livePer := (float64(afterLive) - float64(afterReg)) / float64(n)
		t.Logf("BenchmarkMemoryPerDevice/%s/n=%d\tregistry %.0f B/device\tlive %.0f B/device\ttotal %.0f B/device\t%s %v (%.1f µs/device)",
			path, n, regPer, livePer, regPer+livePer, path, buildTime.Round(time.Millisecond),
			float64(buildTime.Microseconds())/float64(n))
		runtime.KeepAlive(reg)
		runtime.KeepAlive(live)
		return int(regPer + livePer)
	}
	t.Run("load", func(t *testing.T) {
		per := measure(t, "load", n, func() (*Registry, time.Duration) {
			start := time.Now()
			reg, err := NewRegistry(ctx, genStore{n: n})
			require.NoError(t, err)
			return reg, time.Since(start) // includes generating and decoding the fleet
		})
		if n >= 50_000 {
			require.LessOrEqual(t, per, 1024, "target: at most 1 KiB per device at fleet scale")
		}
	})
	if nCreate == 0 {
		return
	}
	t.Run("create", func(t *testing.T) {
		measure(t, "create", nCreate, func() (*Registry, time.Duration) {
			reg, err := NewRegistry(ctx, discardStore{})
			require.NoError(t, err)
			var inCreate time.Duration
			cpu := processCPU()
			for i := range nCreate {
				// A request decoded per device, as the API does.
				var d Device
				require.NoError(t, json.Unmarshal(fleetDoc(fleetDevice(i)), &d))
				start := time.Now()
				_, err := reg.Create(ctx, d)
				inCreate += time.Since(start)
				require.NoError(t, err)
			}
			t.Logf("create: process CPU %v for %d creates (request decoding included)", (processCPU() - cpu).Round(time.Millisecond), nCreate)
			return reg, inCreate
		})
	})
}

// BenchmarkCreateAt measures one Create into a registry that already holds n
// devices, with a store that persists nothing (the registry's own cost) and
// with SQLite (the whole cost; SQLite's share is the difference, and
// BenchmarkSQLiteInsert measures it alone).
func BenchmarkCreateAt(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1_000, 10_000, 30_000, 100_000} {
		b.Run(fmt.Sprintf("discard/n=%d", n), func(b *testing.B) {
			reg, err := NewRegistry(ctx, genStore{n: n})
			require.NoError(b, err)
			benchCreates(b, reg)
		})
	}
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("sqlite/n=%d", n), func(b *testing.B) {
			store := sqliteWithFleet(b, n)
			reg, err := NewRegistry(ctx, store)
			require.NoError(b, err)
			benchCreates(b, reg)
		})
	}
}

// processCPU is the CPU time the test process has used (every thread, so GC
// included). The machine is shared: wall time per op swings with the load,
// CPU time much less.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process CPU time per op since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
}

func benchCreates(b *testing.B, reg *Registry) {
	ctx := context.Background()
	b.ReportAllocs()
	cpu := processCPU()
	defer reportCPU(b, cpu)
	i := 0
	for b.Loop() {
		if _, err := reg.Create(ctx, newFleetDevice(i)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// newFleetDevice is fleet device i under an id no fleet device has.
func newFleetDevice(i int) Device {
	d := fleetDevice(i)
	d.ID = "new-" + strconv.Itoa(i)
	return d
}

// sqliteWithFleet returns a SQLite store holding n fleet devices, inserted in
// one transaction.
func sqliteWithFleet(b *testing.B, n int) *SQLiteStore {
	b.Helper()
	ctx := context.Background()
	db, _ := openTestDB(b)
	store, err := NewSQLiteStore(ctx, db)
	require.NoError(b, err)
	h, err := hashSecret("fleet-secret-0123456789")
	require.NoError(b, err)
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(b, err)
	for i := range n {
		d := fleetDevice(i)
		d.CreatedAt = time.Now().UTC()
		_, err = tx.ExecContext(ctx, `INSERT INTO devices (id, doc, secret_hash) VALUES (?, ?, ?)`, d.ID, string(fleetDoc(d)), h)
		require.NoError(b, err)
	}
	require.NoError(b, tx.Commit())
	return store
}

// BenchmarkSQLiteInsert is SQLite's share of a create: one Insert into a
// table of n devices.
func BenchmarkSQLiteInsert(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			store := sqliteWithFleet(b, n)
			h, err := hashSecret("fleet-secret-0123456789")
			require.NoError(b, err)
			b.ReportAllocs()
			cpu := processCPU()
			defer reportCPU(b, cpu)
			i := 0
			for b.Loop() {
				d := newFleetDevice(i)
				normalize(&d)
				if err := store.Insert(ctx, Record{Device: d, SecretHash: h}); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// Live at fleet scale: 100,000 devices, so that lookups miss the caches the
// way they do in production (BenchmarkLiveConsume's 10,000 devices mostly
// fit). Only the public API, so the same file measures any version of Live.

const liveFleetN = 100_000

var (
	liveFleetOnce sync.Once
	liveFleetReg  *Registry
	liveFleetIDs  []string
)

// liveFleet returns a registry of liveFleetN fleet devices (built once per
// process: loading it takes seconds) and their ids.
func liveFleet(b *testing.B) (*Registry, []string) {
	b.Helper()
	liveFleetOnce.Do(func() {
		reg, err := NewRegistry(context.Background(), genStore{n: liveFleetN})
		if err != nil {
			panic(err)
		}
		liveFleetReg = reg
		liveFleetIDs = benchIDs(liveFleetN)
	})
	require.Equal(b, liveFleetN, liveFleetReg.Count())
	return liveFleetReg, liveFleetIDs
}

// warmLive returns a Live in which the first n fleet devices have sent one
// reading, and the fleet's ids.
func warmLive(b *testing.B, n int) (*Live, []string) {
	reg, ids := liveFleet(b)
	live := NewLive(LiveOptions{Lookup: reg.Lookup, Registered: reg.Count})
	ts := time.Now()
	for i := range ids[:n] {
		live.Consume([]telemetry.Reading{fleetReading(i, ts)})
	}
	return live, ids
}

// BenchmarkLiveConsumeFleet is one reading of 3 metrics per op into a Live
// that holds every device, in a cache-unfriendly order, with the timestamp
// forms ingest produces: arrival time (time.Now: monotonic reading, Local),
// Unix milliseconds (Local) and RFC 3339 "Z" (UTC).
func BenchmarkLiveConsumeFleet(b *testing.B) {
	forms := []struct {
		name string
		ts   func(base time.Time, i int) time.Time
	}{
		{"arrival", func(base time.Time, i int) time.Time { return base.Add(time.Duration(i) * time.Millisecond) }},
		{"unixms", func(base time.Time, i int) time.Time { return time.UnixMilli(base.UnixMilli() + int64(i)) }},
		{"rfc3339", func(base time.Time, i int) time.Time { return base.UTC().Add(time.Duration(i) * time.Millisecond) }},
	}
	for _, form := range forms {
		b.Run("ts="+form.name, func(b *testing.B) {
			live, ids := warmLive(b, liveFleetN)
			var seed atomic.Int64
			b.ReportAllocs()
			defer reportCPU(b, processCPU())
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				batch := []telemetry.Reading{{Values: []telemetry.Value{
					{Name: "flow_vph", Num: 1200},
					{Name: "ice_warning", IsBool: true},
					{Name: "speed_kmh", Num: 54.5},
				}}}
				base := time.Now()
				for pb.Next() {
					// A large odd stride: consecutive ops touch unrelated devices.
					batch[0].DeviceID = ids[(i*40503)%liveFleetN]
					batch[0].Time = form.ts(base, i)
					live.Consume(batch)
					i++
				}
			})
		})
	}
}

// serialBatch is the one reading of 3 metrics that the serial benchmarks
// send, device after device.
func serialBatch() []telemetry.Reading {
	return []telemetry.Reading{{Values: []telemetry.Value{
		{Name: "flow_vph", Num: 1200},
		{Name: "ice_warning", IsBool: true},
		{Name: "speed_kmh", Num: 54.5},
	}}}
}

// BenchmarkLiveConsumeSerial is the cost of one reading on one core, with no
// contention: at 10,000 devices the state stays in the caches (the
// instructions), at 100,000 it does not (the memory). Each op is a 3-metric
// reading of the next device with an arrival time, as in
// BenchmarkLiveConsume, whose two goroutines can fall into step on the same
// entries and then wait on each other's locks.
func BenchmarkLiveConsumeSerial(b *testing.B) {
	for _, n := range []int{10_000, liveFleetN} {
		b.Run("n="+strconv.Itoa(n), func(b *testing.B) {
			live, ids := warmLive(b, n)
			batch := serialBatch()
			base := time.Now()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				batch[0].DeviceID = ids[(i*40503)%n]
				batch[0].Time = base.Add(time.Duration(i) * time.Millisecond)
				live.Consume(batch)
				i++
			}
		})
	}
}

// BenchmarkLiveFirstReading is the first reading of a device: the entry is
// created.
func BenchmarkLiveFirstReading(b *testing.B) {
	reg, ids := liveFleet(b)
	newLive := func() *Live { return NewLive(LiveOptions{Lookup: reg.Lookup}) }
	live := newLive()
	ts := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(ids) {
			b.StopTimer()
			live, i = newLive(), 0
			b.StartTimer()
		}
		live.Consume([]telemetry.Reading{fleetReading(i, ts)})
		i++
	}
}

// BenchmarkLiveSweep is one sweep over every device (no status changes).
func BenchmarkLiveSweep(b *testing.B) {
	live, _ := warmLive(b, liveFleetN)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		live.Sweep(now)
	}
}

// BenchmarkLiveGet is a device's state as the API reads it.
func BenchmarkLiveGet(b *testing.B) {
	live, ids := warmLive(b, liveFleetN)
	var seed atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		for pb.Next() {
			if _, ok := live.Get(ids[(i*40503)%liveFleetN]); !ok {
				b.Error("missing device")
				return
			}
			i++
		}
	})
}
