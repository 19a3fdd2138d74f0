package auth

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFailureLimiter(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC)
	l := NewFailureLimiter(FailureLimiterOptions{PerMinute: 10, Burst: 20, MaxClients: 3})

	// A client that never fails is never limited and costs no memory.
	for i := 0; i < 1000; i++ {
		ok, _ := l.Allow("good", t0)
		require.True(t, ok)
	}
	require.Zero(t, l.Len())

	// 20 failures in a row are allowed, the 21st attempt is refused.
	for i := 0; i < 20; i++ {
		ok, _ := l.Allow("bad", t0)
		require.True(t, ok, "attempt %d", i)
		l.Fail("bad", t0)
	}
	ok, wait := l.Allow("bad", t0)
	require.False(t, ok)
	require.Equal(t, 6*time.Second, wait, "one token per 6s at 10/min")
	// Another client is unaffected.
	ok, _ = l.Allow("other", t0)
	require.True(t, ok)

	// After 6s one more attempt; failing it empties the bucket again.
	ok, _ = l.Allow("bad", t0.Add(6*time.Second))
	require.True(t, ok)
	l.Fail("bad", t0.Add(6*time.Second))
	ok, _ = l.Allow("bad", t0.Add(7*time.Second))
	require.False(t, ok)

	// Refilled after 2 minutes: forgotten on the next look.
	ok, _ = l.Allow("bad", t0.Add(10*time.Minute))
	require.True(t, ok)
	require.Zero(t, l.Len())

	// Bounded: at most MaxClients tracked, the least recently failed go.
	for i := 0; i < 100; i++ {
		l.Fail(fmt.Sprintf("10.0.0.%d", i), t0)
	}
	require.Equal(t, 3, l.Len())
	for i := 97; i < 100; i++ {
		_, ok := l.clients[fmt.Sprintf("10.0.0.%d", i)]
		require.True(t, ok)
	}
}

func TestFailureLimiterDefaults(t *testing.T) {
	l := NewFailureLimiter(FailureLimiterOptions{})
	require.InDelta(t, 10.0/60, l.rate, 1e-12)
	require.EqualValues(t, 20, l.burst)
	require.Equal(t, DefaultMaxClients, l.max)
}
