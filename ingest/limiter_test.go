package ingest

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestLimiter(t *testing.T) {
	t0 := time.Date(2025, 11, 26, 0, 0, 0, 0, time.UTC)
	t.Run("burst then the rate", func(t *testing.T) {
		l := newLimiter(10, 3) // interval 10s: 1 message/s
		for i := range 3 {
			assert.True(t, l.allow("d", 10*time.Second, t0, t0), "message %d", i)
		}
		assert.False(t, l.allow("d", 10*time.Second, t0, t0))
		assert.False(t, l.allow("d", 10*time.Second, t0.Add(500*time.Millisecond), t0))
		assert.True(t, l.allow("d", 10*time.Second, t0.Add(time.Second), t0))
		assert.True(t, l.allow("other", 10*time.Second, t0, t0), "buckets are per device")
	})
	t.Run("a backlog spaced at the interval passes", func(t *testing.T) {
		l := newLimiter(10, 3)
		// 500 messages delivered in the same instant, readings 10s apart.
		for i := range 500 {
			assert.True(t, l.allow("d", 10*time.Second, t0, t0.Add(time.Duration(i)*10*time.Second)), "message %d", i)
		}
	})
	t.Run("old readings replayed fast do not refill", func(t *testing.T) {
		l := newLimiter(10, 2)
		assert.True(t, l.allow("d", time.Minute, t0, t0))
		assert.True(t, l.allow("d", time.Minute, t0, t0.Add(-time.Hour)))
		assert.False(t, l.allow("d", time.Minute, t0, t0.Add(-2*time.Hour)))
	})
	t.Run("unknown interval is 1s; negative limit is off", func(t *testing.T) {
		l := newLimiter(1, 1)
		assert.True(t, l.allow("d", 0, t0, t0))
		assert.False(t, l.allow("d", 0, t0.Add(500*time.Millisecond), t0))
		assert.True(t, l.allow("d", 0, t0.Add(time.Second), t0))
		off := newLimiter(-1, 1)
		for range 100 {
			assert.True(t, off.allow("d", time.Hour, t0, t0))
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
	l := newLimiter(10, 100)
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("tc-%04d", i)
	}
	t0 := time.Now()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			l.allow(ids[i%100], time.Microsecond, t0.Add(time.Duration(i)), t0)
		}
	})
}

// TestLimiterForgetsFullBuckets: a bucket that has refilled is dropped at
// the next sweep (a deleted or quiet device costs nothing), and dropping it
// changes no answer; a bucket still refilling is kept.
func TestLimiterForgetsFullBuckets(t *testing.T) {
	t0 := time.Date(2025, 11, 26, 0, 0, 0, 0, time.UTC)
	l := newLimiter(1, 2) // interval 1s: 1 message/s, burst 2
	for i := range 100 {
		assert.True(t, l.allow(fmt.Sprintf("d%d", i), time.Second, t0, t0))
	}
	assert.True(t, l.allow("busy", time.Second, t0, t0))
	assert.True(t, l.allow("busy", time.Second, t0, t0))
	assert.Equal(t, 101, l.len())

	// A sweep after the others refilled (1 s) but while "busy" is empty.
	t1 := t0.Add(limiterSweepEvery)
	assert.True(t, l.allow("busy", time.Second, t1, t1), "refilled by the clock")
	assert.True(t, l.allow("busy", time.Second, t1, t1))
	assert.False(t, l.allow("busy", time.Second, t1, t1), "burst spent again")
	l.mu.Lock()
	l.sweep(t1.UnixNano())
	l.mu.Unlock()
	assert.Equal(t, 1, l.len(), "only the bucket still refilling is kept")
	assert.False(t, l.allow("busy", time.Second, t1, t1), "kept: still empty")
	assert.True(t, l.allow("d7", time.Second, t1, t1), "a dropped bucket starts full, as it was")
	assert.True(t, l.allow("d7", time.Second, t1, t1))
	assert.False(t, l.allow("d7", time.Second, t1, t1))

	// A tiny rate does not overflow the refill time into a past one.
	slow := newLimiter(1e-9, 1)
	assert.True(t, slow.allow("d", 24*time.Hour, t0, t0))
	assert.False(t, slow.allow("d", 24*time.Hour, t0.Add(2*limiterSweepEvery), t0))
}
