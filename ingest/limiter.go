package ingest

import (
	"math"
	"sync"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
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
// A fleet has ~10^5 buckets, so a bucket is small (32 bytes, in one slice
// indexed by the device's registry slot: no id hashing under the lock, and
// no map overhead per device), and a bucket that can no longer answer
// differently from no bucket is emptied now and then: one that has refilled
// completely and whose newest reading is older than MaxAge (so any reading
// still accepted is newer, as for a new bucket).
// A deleted device's bucket goes after MaxAge.
type limiter struct {
	factor float64 // multiple of the expected rate
	burst  float64
	maxAge int64 // ns: readings older than this are rejected before allow
	// base is the clock at start: clock times are kept as the monotonic
	// time since it, so a step of the wall clock neither stops nor
	// speeds refills.
	base time.Time

	mu sync.Mutex
	// buckets is indexed by telemetry.Device.Slot, so it is as long as the
	// most devices registered at once; a bucket with a nil dev is none.
	buckets   []bucket
	nextSweep int64 // since base, ns
}

// limiterSweepEvery is how often buckets are dropped.
const limiterSweepEvery = time.Minute

// bucket: clock times in ns since limiter.base, reading times in Unix ns
// (ingest accepts reading times only within MaxAge and MaxFuture of the
// clock, well inside int64's range).
type bucket struct {
	tokens float64
	wall   int64 // clock at the last message
	data   int64 // newest reading time seen
	// dev is the registry entry of the device counted, at its last
	// message (its Interval is the one the tokens were counted at): a slot
	// that a deleted device left is taken by a new one, which must not
	// inherit its state. An update is a new entry with the same id, so a
	// pointer that differs is checked by id.
	dev *telemetry.Device
}

// newLimiter: maxAge is ingest's MaxAge (readings older are rejected
// before they reach the limiter).
func newLimiter(factor float64, burst int, maxAge time.Duration) *limiter {
	return &limiter{factor: factor, burst: float64(burst), maxAge: int64(maxAge), base: time.Now(),
		nextSweep: math.MinInt64}
}

// allow takes a token for one message of dev (a registry entry), whose
// newest reading is at data; now is the clock. An expected interval of 0
// (unknown) is taken as 1s.
func (l *limiter) allow(dev *telemetry.Device, now, data time.Time) bool {
	if l.factor < 0 {
		return true
	}
	rate := l.factor / float64(interval(dev)) // messages per nanosecond
	nowNs, dataNs := int64(now.Sub(l.base)), data.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	if nowNs >= l.nextSweep {
		l.sweep(nowNs, now.UnixNano())
	}
	if int(dev.Slot) >= len(l.buckets) {
		l.buckets = append(l.buckets, make([]bucket, int(dev.Slot)+1-len(l.buckets))...)
	}
	b := &l.buckets[dev.Slot]
	if b.dev != dev {
		if b.dev == nil || b.dev.ID != dev.ID {
			*b = bucket{tokens: l.burst, wall: nowNs, data: dataNs}
		}
		b.dev = dev
	}
	elapsed := max(nowNs-b.wall, 0)
	if d := dataNs - b.data; d > elapsed {
		elapsed = d
	}
	b.tokens = min(l.burst, b.tokens+float64(elapsed)*rate)
	b.wall = max(b.wall, nowNs)
	b.data = max(b.data, dataNs)
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	return allowed
}

// interval is dev's expected interval, 1s when unknown.
func interval(dev *telemetry.Device) time.Duration {
	if dev.Interval <= 0 {
		return time.Second
	}
	return dev.Interval
}

// full is the clock at which b is back to burst tokens: worked out by the
// sweep, not on every message. Rounded up, so that at full the bucket is
// full; saturated, as a tiny rate can put the refill past int64's
// nanoseconds.
func (l *limiter) full(b *bucket) int64 {
	return b.wall + int64(min(math.Ceil((l.burst-b.tokens)*float64(interval(b.dev))/l.factor)+1, float64(math.MaxInt64/2)))
}

// sweep empties the buckets that no longer differ from none (one pass
// under the lock, once a minute), which also lets go of a deleted device's
// registry entry: now is the clock since base, wall the clock in Unix ns.
// Caller holds l.mu.
func (l *limiter) sweep(now, wall int64) {
	for i := range l.buckets {
		b := &l.buckets[i]
		if b.dev != nil && l.full(b) <= now && b.data <= wall-l.maxAge {
			*b = bucket{}
		}
	}
	l.nextSweep = now + int64(limiterSweepEvery)
}
