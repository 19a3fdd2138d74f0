package ingest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// timeConsumer keeps the readings it is given; while gate is set, it
// waits for it to be closed before returning.
type timeConsumer struct {
	mu      sync.Mutex
	times   []time.Time
	gate    chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (c *timeConsumer) Consume(rs []telemetry.Reading) {
	c.mu.Lock()
	for _, r := range rs {
		c.times = append(c.times, r.Time)
	}
	c.mu.Unlock()
	if c.gate != nil {
		c.once.Do(func() { close(c.entered) })
		<-c.gate
	}
}

func (c *timeConsumer) got() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.times...)
}

// switchRegistry is a registry a test adds devices to.
type switchRegistry struct {
	mu   sync.Mutex
	devs map[string]*telemetry.Device
}

func (r *switchRegistry) lookup(id string) (*telemetry.Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.devs[id]
	return d, ok
}

func (r *switchRegistry) register(d *telemetry.Device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.devs == nil {
		r.devs = map[string]*telemetry.Device{}
	}
	r.devs[d.ID] = d
}

// TestReplayKeepsArrivalTime: a reading without ts takes the time its
// message arrived; replayed from the dead letters an hour later, it is
// the same reading, not one taken at the replay (which would store it an
// hour late and show a device that died meanwhile as online).
func TestReplayKeepsArrivalTime(t *testing.T) {
	var clock atomic.Int64
	arrived := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	clock.Store(arrived.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	reg := &switchRegistry{}
	cons := &timeConsumer{}
	in, stop := startLocal(t, Options{
		Local: &fakeLocal{}, Lookup: reg.lookup, Writer: &gateWriter{}, Consumers: []telemetry.Consumer{cons},
		FlushInterval: 5 * time.Millisecond, Now: now,
	})
	defer stop()

	require.True(t, in.Deliver("devices/new-1/telemetry", []byte(`{"values":{"flow_vph":7}}`), nil))
	require.Eventually(t, func() bool { return len(in.DeadLetters(DeadLetterFilter{})) == 1 }, 5*time.Second, time.Millisecond)
	dl := in.DeadLetters(DeadLetterFilter{})[0]
	require.Equal(t, ReasonUnknownDevice, dl.Reason)
	require.True(t, dl.ReceivedAt.Equal(arrived))

	clock.Store(arrived.Add(time.Hour).UnixNano())
	reg.register(counter("new-1", "traffic_counter"))
	res, err := in.ReplayDeadLetters(context.Background(), ReplaySelector{IDs: []uint64{dl.ID}})
	require.NoError(t, err)
	require.Equal(t, 1, res.Replayed)
	require.Eventually(t, func() bool { return len(cons.got()) == 1 }, 5*time.Second, time.Millisecond)
	assert.True(t, cons.got()[0].Equal(arrived), "reading stamped %s, arrived %s", cons.got()[0], arrived)

	// Rejected again, its dead letter keeps the first arrival.
	require.True(t, in.Deliver("devices/new-2/telemetry", []byte(`{"values":{"flow_vph":7}}`), nil))
	require.Eventually(t, func() bool { return len(in.DeadLetters(DeadLetterFilter{DeviceID: "new-2"})) == 1 }, 5*time.Second, time.Millisecond)
	first := in.DeadLetters(DeadLetterFilter{DeviceID: "new-2"})[0]
	clock.Store(arrived.Add(2 * time.Hour).UnixNano())
	_, err = in.ReplayDeadLetters(context.Background(), ReplaySelector{IDs: []uint64{first.ID}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		l := in.DeadLetters(DeadLetterFilter{DeviceID: "new-2"})
		return len(l) == 1 && l[0].ID != first.ID
	}, 5*time.Second, time.Millisecond)
	again := in.DeadLetters(DeadLetterFilter{DeviceID: "new-2"})[0]
	assert.True(t, again.ReceivedAt.Equal(first.ReceivedAt), "received_at %s, first %s", again.ReceivedAt, first.ReceivedAt)
}

// TestReplayWhileStoppingLosesNothing: replayed messages still queued for
// a worker when Run ends are not delivered again by any broker: they go
// back to the dead letters, so every replayed message is either run or
// still there to replay.
func TestReplayWhileStoppingLosesNothing(t *testing.T) {
	const n = 10
	reg := &switchRegistry{}
	cons := &timeConsumer{gate: make(chan struct{}), entered: make(chan struct{})}
	in, stop := startLocal(t, Options{
		Local: &fakeLocal{}, Lookup: reg.lookup, Writer: &gateWriter{}, Consumers: []telemetry.Consumer{cons},
		FlushInterval: 5 * time.Millisecond, Workers: 1, QueueSize: 4 * n,
	})
	base := time.Now().Add(-time.Minute).UnixMilli()
	for i := range n {
		require.True(t, in.Deliver("devices/new-1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, base+int64(i), i), nil))
	}
	require.Eventually(t, func() bool { return len(in.DeadLetters(DeadLetterFilter{})) == n }, 5*time.Second, time.Millisecond)
	reg.register(counter("new-1", "traffic_counter"))
	res, err := in.ReplayDeadLetters(context.Background(), ReplaySelector{Reason: ReasonUnknownDevice})
	require.NoError(t, err)
	require.Equal(t, n, res.Replayed)
	<-cons.entered // the worker holds the first; the rest wait in its inbox

	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	<-in.stopping
	close(cons.gate)
	<-stopped

	_, err = in.ReplayDeadLetters(context.Background(), ReplaySelector{Reason: ReasonUnknownDevice})
	require.ErrorIs(t, err, ErrNotRunning)
	assert.Equal(t, n, len(cons.got())+len(in.DeadLetters(DeadLetterFilter{})),
		"run %d, back in the dead letters %d", len(cons.got()), len(in.DeadLetters(DeadLetterFilter{})))
}

// TestReplayPutBackKeepsEveryDeadLetter: a replay that cannot queue a
// gateway message puts back all its dead letters (one per device), not
// only the one it would have run.
func TestReplayPutBackKeepsEveryDeadLetter(t *testing.T) {
	in, err := New(Options{Local: &fakeLocal{}, Lookup: registry{}.lookup, Writer: &gateWriter{}, Workers: 1, QueueSize: 2})
	require.NoError(t, err)
	in.started.Store(true)                        // Run is not needed: the inbox is never read
	in.inbox[0] <- inboxItem{m: &replayMessage{}} // full
	for _, dev := range []string{"d1", "d2", "d3"} {
		in.dead.add(deadLetter{DeadLetter: DeadLetter{Topic: "gateways/gw-1/telemetry", GatewayID: "gw-1", DeviceID: dev, Reason: ReasonUnknownDevice},
			payload: []byte(`{}`)}, 1, true)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := in.ReplayDeadLetters(ctx, ReplaySelector{Reason: ReasonUnknownDevice})
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, res.Replayed)
	var devs []string
	for _, dl := range in.DeadLetters(DeadLetterFilter{}) {
		devs = append(devs, dl.DeviceID)
	}
	assert.ElementsMatch(t, []string{"d1", "d2", "d3"}, devs)
}
