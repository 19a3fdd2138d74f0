package ingest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/infrawatch/infrawatch/telemetry"
)

func TestLimiter(t *testing.T) {
	t0 := time.Date(2025, 11, 26, 0, 0, 0, 0, time.UTC)
	t.Run("burst then the rate", func(t *testing.T) {
		l := newLimiter(10, 3, time.Hour) // interval 10s: 1 message/s
		for i := range 3 {
			assert.True(t, l.allow(td("d", 10*time.Second), t0, t0), "message %d", i)
		}
		assert.False(t, l.allow(td("d", 10*time.Second), t0, t0))
		assert.False(t, l.allow(td("d", 10*time.Second), t0.Add(500*time.Millisecond), t0))
		assert.True(t, l.allow(td("d", 10*time.Second), t0.Add(time.Second), t0))
		assert.True(t, l.allow(td("other", 10*time.Second), t0, t0), "buckets are per device")
	})
	t.Run("a backlog spaced at the interval passes", func(t *testing.T) {
		l := newLimiter(10, 3, time.Hour)
		// 500 messages delivered in the same instant, readings 10s apart.
		for i := range 500 {
			assert.True(t, l.allow(td("d", 10*time.Second), t0, t0.Add(time.Duration(i)*10*time.Second)), "message %d", i)
		}
	})
	t.Run("old readings replayed fast do not refill", func(t *testing.T) {
		l := newLimiter(10, 2, time.Hour)
		assert.True(t, l.allow(td("d", time.Minute), t0, t0))
		assert.True(t, l.allow(td("d", time.Minute), t0, t0.Add(-time.Hour)))
		assert.False(t, l.allow(td("d", time.Minute), t0, t0.Add(-2*time.Hour)))
	})
	t.Run("unknown interval is 1s; negative limit is off", func(t *testing.T) {
		l := newLimiter(1, 1, time.Hour)
		assert.True(t, l.allow(td("d", 0), t0, t0))
		assert.False(t, l.allow(td("d", 0), t0.Add(500*time.Millisecond), t0))
		assert.True(t, l.allow(td("d", 0), t0.Add(time.Second), t0))
		off := newLimiter(-1, 1, time.Hour)
		for range 100 {
			assert.True(t, off.allow(td("d", time.Hour), t0, t0))
		}
	})
}

func TestParseTopic(t *testing.T) {
	for topic, want := range map[string]struct {
		kind topicKind
		id   string
	}{
		"devices/tc-1/telemetry":  {topicDevice, "tc-1"},
		"devices/tc-1/status":     {topicStatus, "tc-1"},
		"gateways/gw-1/telemetry": {topicGateway, "gw-1"},
		"gateways/gw-1/status":    {topicOther, "gw-1"},
		"devices/tc-1":            {topicOther, ""},
		"alerts/x/y":              {topicOther, ""},
	} {
		k, id := parseTopic(topic)
		assert.Equal(t, want.kind, k, topic)
		assert.Equal(t, want.id, id, topic)
	}
}

// BenchmarkLimiter: allow from parallel goroutines (as the broker's device
// connections call it), 100 devices.
func BenchmarkLimiter(b *testing.B) {
	l := newLimiter(10, 100, time.Hour)
	devs := make([]*telemetry.Device, 100)
	for i := range devs {
		devs[i] = td(fmt.Sprintf("tc-%04d", i), time.Microsecond)
	}
	t0 := time.Now()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			l.allow(devs[i%100], t0.Add(time.Duration(i)), t0)
		}
	})
}

// TestLimiterForgetsFullBuckets: a bucket is dropped once it is full and
// its newest reading is older than MaxAge, and only then: dropping changes
// no answer, even for a backlog older than the device's last reading.
func TestLimiterForgetsFullBuckets(t *testing.T) {
	t0 := time.Date(2025, 11, 26, 0, 0, 0, 0, time.UTC)
	sweepAll := func(l *limiter, now time.Time) {
		l.mu.Lock()
		l.sweep(int64(now.Sub(l.base)), now.UnixNano())
		l.mu.Unlock()
	}
	const maxAge = time.Hour
	l := newLimiter(1, 2, maxAge) // interval 1s: 1 message/s, burst 2
	for i := range 100 {
		assert.True(t, l.allow(td(fmt.Sprintf("d%d", i), time.Second), t0, t0))
	}
	assert.True(t, l.allow(td("busy", time.Second), t0, t0))
	assert.True(t, l.allow(td("busy", time.Second), t0, t0))

	t1 := t0.Add(limiterSweepEvery) // all full again, newest readings recent
	sweepAll(l, t1)
	assert.Equal(t, 101, l.len(), "kept: a reading older than the newest may still come")

	t2 := t0.Add(maxAge + limiterSweepEvery)
	assert.True(t, l.allow(td("busy", time.Second), t2, t2))
	assert.True(t, l.allow(td("busy", time.Second), t2, t2))
	sweepAll(l, t2)
	assert.Equal(t, 1, l.len(), "full and past MaxAge: dropped; still refilling: kept")
	assert.False(t, l.allow(td("busy", time.Second), t2, t2), "kept: still empty")
	assert.True(t, l.allow(td("d7", time.Second), t2, t2), "a dropped bucket starts full, as it was")
	assert.True(t, l.allow(td("d7", time.Second), t2, t2))
	assert.False(t, l.allow(td("d7", time.Second), t2, t2))

	// A backlog older than the device's last reading (accepted: within
	// MaxAge) gets the same answers whether or not a sweep ran between.
	backlog := func(sweep bool) int {
		l := newLimiter(1, 5, maxAge)
		live := t0
		l.allow(td("d", 10*time.Second), live, live)
		later := live.Add(2 * time.Minute) // refilled
		if sweep {
			sweepAll(l, later)
		}
		n := 0
		for i := range 50 {
			if l.allow(td("d", 10*time.Second), later.Add(time.Duration(i)*time.Millisecond),
				live.Add(-30*time.Minute+time.Duration(i)*10*time.Second)) {
				n++
			}
		}
		return n
	}
	// Burst only: old data earns no refill, swept or not.
	assert.Equal(t, 5, backlog(false))
	assert.Equal(t, 5, backlog(true))

	// A tiny rate does not overflow the refill time into a past one: the
	// bucket, far from full, survives a sweep past MaxAge.
	slow := newLimiter(1e-9, 1, maxAge)
	now := time.Now() // after slow.base, as in production
	assert.True(t, slow.allow(td("d", 24*time.Hour), now, now))
	later := now.Add(maxAge + 2*limiterSweepEvery)
	assert.False(t, slow.allow(td("d", 24*time.Hour), later, later), "kept: refill is ~forever away")
}

// len is the number of buckets held.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, b := range l.buckets {
		if b.dev != nil {
			n++
		}
	}
	return n
}

// td returns a registry entry for device id, with the slot the registry
// would give it. Each call returns a new entry, as an update of the device
// does.
func td(id string, interval time.Duration) *telemetry.Device {
	return &telemetry.Device{ID: id, Slot: slotOf(id), Profile: &telemetry.Profile{Interval: interval}}
}

// slotOf is the slot of device id in the tests' registries: one per id, as
// the registry gives them (the limiter counts per slot).
func slotOf(id string) uint32 {
	testSlots.Lock()
	defer testSlots.Unlock()
	slot, ok := testSlots.m[id]
	if !ok {
		slot = uint32(len(testSlots.m))
		testSlots.m[id] = slot
	}
	return slot
}

var testSlots = struct {
	sync.Mutex
	m map[string]uint32
}{m: map[string]uint32{}}

// TestLimiterSlotReuse: a device that takes the slot a deleted one left
// starts with a bucket of its own; an update of the same device keeps its
// bucket; the same entry again takes the fast path.
func TestLimiterSlotReuse(t *testing.T) {
	t0 := time.Date(2025, 11, 26, 0, 0, 0, 0, time.UTC)
	l := newLimiter(1, 2, time.Hour) // interval 1s: 1 message/s, burst 2
	old := &telemetry.Device{ID: "old", Slot: 3, Profile: &telemetry.Profile{Interval: time.Second}}
	assert.True(t, l.allow(old, t0, t0))
	assert.True(t, l.allow(old, t0, t0))
	assert.False(t, l.allow(old, t0, t0), "old is out of tokens")

	updated := &telemetry.Device{ID: "old", Slot: 3, Profile: &telemetry.Profile{Interval: time.Second}}
	assert.False(t, l.allow(updated, t0, t0), "an update keeps the bucket")

	newcomer := &telemetry.Device{ID: "new", Slot: 3, Profile: &telemetry.Profile{Interval: time.Second}}
	assert.True(t, l.allow(newcomer, t0, t0), "a new device in a reused slot starts full")
	assert.True(t, l.allow(newcomer, t0, t0))
	assert.False(t, l.allow(newcomer, t0, t0))
	assert.Equal(t, 1, l.len())
	assert.Len(t, l.buckets, 4, "as long as the highest slot seen")
}

// BenchmarkLimiterSweep: the once-a-minute sweep over 100,000 devices'
// buckets, which holds the limiter's lock (every message waits for it).
func BenchmarkLimiterSweep(b *testing.B) {
	const n = 100_000
	l := newLimiter(10, 100, time.Hour)
	t0 := time.Now()
	for i := range n {
		l.allow(&telemetry.Device{ID: fmt.Sprint(i), Slot: uint32(i), Profile: &telemetry.Profile{Interval: time.Second}}, t0, t0)
	}
	now := int64(time.Since(l.base))
	b.ResetTimer()
	for b.Loop() {
		l.mu.Lock()
		l.sweep(now, t0.UnixNano()) // all recent: every bucket kept
		l.mu.Unlock()
	}
	if l.len() != n {
		b.Fatalf("%d buckets kept, want %d", l.len(), n)
	}
}
