package ingest

import (
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
type limiter struct {
	factor float64 // multiple of the expected rate
	burst  float64
	mu     sync.Mutex
	m      map[string]*bucket
}

type bucket struct {
	tokens float64
	wall   time.Time // clock at the last message
	data   time.Time // newest reading time seen
}

func newLimiter(factor float64, burst int) *limiter {
	return &limiter{factor: factor, burst: float64(burst), m: make(map[string]*bucket)}
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
	rate := l.factor / interval.Seconds() // messages per second
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[id]
	if b == nil {
		// The map holds registered devices only (unknown ones are
		// rejected first), so it is bounded by the registry.
		b = &bucket{tokens: l.burst, wall: now, data: data}
		l.m[id] = b
	}
	elapsed := max(now.Sub(b.wall), 0)
	if d := data.Sub(b.data); d > elapsed {
		elapsed = d
	}
	b.tokens = min(l.burst, b.tokens+elapsed.Seconds()*rate)
	if now.After(b.wall) {
		b.wall = now
	}
	if data.After(b.data) {
		b.data = data
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
