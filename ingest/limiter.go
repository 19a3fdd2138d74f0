package ingest

import (
	"math"
	"sync"
	"time"
)

// limiter is a token bucket per device, counting messages (a gateway
// message counts once for each device in it).
//
// The bucket refills with the larger of the wall-clock time and the
// progress of the device's newest reading time since the last message. A
// device flooding current readings is limited by the clock; but a backlog
// the broker delivers all at once after an ingest restart (readings spaced
// at the device's interval) refills its own tokens and passes, so a restart
// loses nothing to the limiter. Reading times cannot run ahead of the clock
// by more than MaxFuture, so this grants no lasting extra rate.
//
// A fleet has ~10^5 buckets, so a bucket is small (32 bytes), and a bucket
// that can no longer answer differently from no bucket is dropped now and
// then: one that has refilled completely and whose newest reading is older
// than MaxAge (so any reading still accepted is newer, as for a new bucket).
// A deleted device's bucket goes after MaxAge.
type limiter struct {
	factor float64 // multiple of the expected rate
	burst  float64
	maxAge int64 // ns: readings older than this are rejected before allow
	// base is the clock at start: clock times are kept as the monotonic
	// time since it, so a step of the wall clock neither stops nor
	// speeds refills.
	base time.Time

	mu        sync.Mutex
	m         map[string]*bucket
	nextSweep int64 // since base, ns
}

// limiterSweepEvery is how often buckets are dropped.
const limiterSweepEvery = time.Minute

// bucket: clock times in ns since limiter.base, reading times in Unix ns
// (ingest accepts reading times only within MaxAge and MaxFuture of the
// clock, well inside int64's range).
type bucket struct {
	tokens   float64
	wall     int64 // clock at the last message
	data     int64 // newest reading time seen
	interval int64 // the device's expected interval at the last message, ns
}

// newLimiter: maxAge is ingest's MaxAge (readings older are rejected
// before they reach the limiter).
func newLimiter(factor float64, burst int, maxAge time.Duration) *limiter {
	return &limiter{factor: factor, burst: float64(burst), maxAge: int64(maxAge), base: time.Now(),
		m: make(map[string]*bucket), nextSweep: math.MinInt64}
}

// allow takes a token for one message of device id, whose expected interval
// is interval (0: unknown, taken as 1s) and whose newest reading is at
// data; now is the clock.
func (l *limiter) allow(id string, interval time.Duration, now, data time.Time) bool {
	if l.factor < 0 {
		return true
	}
	if interval <= 0 {
		interval = time.Second
	}
	rate := l.factor / float64(interval) // messages per nanosecond
	nowNs, dataNs := int64(now.Sub(l.base)), data.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	if nowNs >= l.nextSweep {
		l.sweep(nowNs, now.UnixNano())
	}
	b := l.m[id]
	if b == nil {
		// The map holds registered devices only (unknown ones are
		// rejected first), so it is bounded by the registry.
		b = &bucket{tokens: l.burst, wall: nowNs, data: dataNs}
		l.m[id] = b
	}
	elapsed := max(nowNs-b.wall, 0)
	if d := dataNs - b.data; d > elapsed {
		elapsed = d
	}
	b.tokens = min(l.burst, b.tokens+float64(elapsed)*rate)
	b.wall = max(b.wall, nowNs)
	b.data = max(b.data, dataNs)
	b.interval = int64(interval)
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	return allowed
}

// full is the clock at which b is back to burst tokens: worked out by the
// sweep, not on every message. Rounded up, so that at full the bucket is
// full; saturated, as a tiny rate can put the refill past int64's
// nanoseconds.
func (l *limiter) full(b *bucket) int64 {
	return b.wall + int64(min(math.Ceil((l.burst-b.tokens)*float64(b.interval)/l.factor)+1, float64(math.MaxInt64/2)))
}

// sweep drops the buckets that no longer differ from none (one pass over
// the map under the lock, once a minute): now is the clock since base,
// wall the clock in Unix ns. Caller holds l.mu.
func (l *limiter) sweep(now, wall int64) {
	for id, b := range l.m {
		if l.full(b) <= now && b.data <= wall-l.maxAge {
			delete(l.m, id)
		}
	}
	l.nextSweep = now + int64(limiterSweepEvery)
}
