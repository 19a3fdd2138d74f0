package devices

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

const benchDevices = 10_000

// benchIDs returns the ids of the first n generated devices ("dev-<i>").
func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "dev-" + strconv.Itoa(i)
	}
	return ids
}

// benchRegistry loads benchDevices devices through the start-up path.
func benchRegistry(b *testing.B) *Registry {
	b.Helper()
	ms := &memStore{recs: map[string]Record{}}
	for _, id := range benchIDs(benchDevices) {
		d := validDevice(id)
		normalize(&d)
		h, err := hashSecret("bench-secret-0123456789")
		require.NoError(b, err)
		ms.recs[id] = Record{Device: d, SecretHash: h}
	}
	reg, err := NewRegistry(context.Background(), ms)
	require.NoError(b, err)
	return reg
}

func BenchmarkLookup(b *testing.B) {
	reg := benchRegistry(b)
	ids := benchIDs(benchDevices)
	var seed atomic.Int64
	b.ReportAllocs()
	defer reportCPU(b, processCPU())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		for pb.Next() {
			if _, ok := reg.Lookup(ids[i%benchDevices]); !ok {
				b.Fatal("missing device")
			}
			i++
		}
	})
}

// BenchmarkLookupDuringWrites measures the hot path while a writer keeps
// publishing new snapshots.
func BenchmarkLookupDuringWrites(b *testing.B) {
	reg := benchRegistry(b)
	ids := benchIDs(benchDevices)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; ctx.Err() == nil; n++ {
			d := validDevice(ids[n%benchDevices])
			d.Name = strconv.Itoa(n)
			_, _ = reg.Update(ctx, d)
			time.Sleep(time.Millisecond)
		}
	}()
	b.ReportAllocs()
	defer reportCPU(b, processCPU())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			reg.Lookup(ids[i%benchDevices])
			i++
		}
	})
	b.StopTimer()
	cancel()
	<-done
}

func BenchmarkLiveConsume(b *testing.B) {
	reg := benchRegistry(b)
	ids := benchIDs(benchDevices)
	live := NewLive(LiveOptions{Lookup: reg.Lookup})
	var seed atomic.Int64
	b.ReportAllocs()
	defer reportCPU(b, processCPU())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(7919))
		batch := []telemetry.Reading{{
			Values: []telemetry.Value{
				{Name: "flow_vph", Num: 1200},
				{Name: "speed_kmh", Num: 54.5},
				{Name: "ice_warning", IsBool: true},
			},
		}}
		ts := time.Now()
		for pb.Next() {
			batch[0].DeviceID = ids[i%benchDevices]
			batch[0].Time = ts.Add(time.Duration(i) * time.Millisecond)
			live.Consume(batch)
			i++
		}
	})
}

func BenchmarkVerifySecret(b *testing.B) {
	reg := benchRegistry(b)
	b.ReportAllocs()
	defer reportCPU(b, processCPU())
	for b.Loop() {
		if ok, err := reg.VerifySecret(context.Background(), "dev-42", "bench-secret-0123456789"); !ok || err != nil {
			b.Fatal("refused")
		}
	}
}

func BenchmarkCreate(b *testing.B) {
	reg := benchRegistry(b)
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if _, err := reg.Create(ctx, validDevice("new-"+strconv.Itoa(n))); err != nil {
			b.Fatal(err)
		}
		n++
	}
}

// BenchmarkLiveConsumeFromIngest is BenchmarkLiveConsumeSerial's workload
// as ingest hands it over: each reading carries its registry entry, which
// ingest looked up for its own checks, so Live finds the entry by its slot
// without a lookup.
func BenchmarkLiveConsumeFromIngest(b *testing.B) {
	live, ids := warmLive(b, 10_000)
	devs := make([]*telemetry.Device, 10_000)
	for i := range devs {
		var ok bool
		devs[i], ok = live.lookup(ids[i])
		require.True(b, ok)
	}
	batch := serialBatch()
	base := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := (i * 40503) % len(devs)
		batch[0].DeviceID, batch[0].Device = ids[k], devs[k]
		batch[0].Time = base.Add(time.Duration(i) * time.Millisecond)
		live.Consume(batch)
		i++
	}
}
