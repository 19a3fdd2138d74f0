package auth

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// Defaults of FailureLimiterOptions.
const (
	DefaultFailuresPerMinute = 10
	DefaultFailureBurst      = 20
	DefaultMaxClients        = 10000
)

// FailureLimiterOptions configure a FailureLimiter. Zero values take the
// defaults above.
type FailureLimiterOptions struct {
	// PerMinute is how many failed authentications per minute a client
	// earns back; Burst how many it may fail in a row from rest.
	PerMinute float64
	Burst     int
	// MaxClients bounds the clients tracked; beyond it the least recently
	// failed one is forgotten (it starts again with a full bucket).
	MaxClients int
}

// FailureLimiter is a token bucket per client key (an IP address) that only
// failed authentications drain. While a client's bucket is empty, Allow
// refuses it, also with valid credentials: otherwise a guesser would learn
// which guess was right from the one answer that is not refused. Successful
// authentications cost nothing. Memory is bounded: a client whose bucket has
// refilled is the same as one never seen and is dropped, and at most
// MaxClients are kept (least recently failed evicted first). Safe for
// concurrent use.
type FailureLimiter struct {
	rate  float64 // tokens per second
	burst float64
	max   int

	mu      sync.Mutex
	clients map[string]*list.Element // key → *bucket in lru
	lru     *list.List               // front: most recently failed
}

type bucket struct {
	key    string
	tokens float64
	at     time.Time // when tokens was computed
}

// NewFailureLimiter returns a limiter with o's defaults filled in.
func NewFailureLimiter(o FailureLimiterOptions) *FailureLimiter {
	if o.PerMinute <= 0 {
		o.PerMinute = DefaultFailuresPerMinute
	}
	if o.Burst <= 0 {
		o.Burst = DefaultFailureBurst
	}
	if o.MaxClients <= 0 {
		o.MaxClients = DefaultMaxClients
	}
	return &FailureLimiter{
		rate: o.PerMinute / 60, burst: float64(o.Burst), max: o.MaxClients,
		clients: map[string]*list.Element{}, lru: list.New(),
	}
}

// level returns b's tokens at now.
func (l *FailureLimiter) level(b *bucket, now time.Time) float64 {
	dt := now.Sub(b.at).Seconds()
	if dt < 0 {
		dt = 0
	}
	return math.Min(l.burst, b.tokens+dt*l.rate)
}

// Allow reports whether key may try to authenticate at now; when not, how
// long until it may (for Retry-After).
func (l *FailureLimiter) Allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[key]
	if !ok {
		return true, 0
	}
	b := e.Value.(*bucket)
	tokens := l.level(b, now)
	if tokens >= 1 {
		if tokens >= l.burst {
			l.forget(e)
		}
		return true, 0
	}
	wait := time.Duration((1 - tokens) / l.rate * float64(time.Second))
	return false, max(wait, time.Second)
}

// Fail records a failed authentication of key at now.
func (l *FailureLimiter) Fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.clients[key]; ok {
		b := e.Value.(*bucket)
		b.tokens, b.at = math.Max(0, l.level(b, now)-1), now
		l.lru.MoveToFront(e)
		return
	}
	for l.lru.Len() >= l.max {
		l.forget(l.lru.Back())
	}
	l.clients[key] = l.lru.PushFront(&bucket{key: key, tokens: l.burst - 1, at: now})
}

// Len is the number of clients tracked.
func (l *FailureLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

func (l *FailureLimiter) forget(e *list.Element) {
	delete(l.clients, e.Value.(*bucket).key)
	l.lru.Remove(e)
}
