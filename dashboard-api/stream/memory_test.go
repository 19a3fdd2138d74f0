package stream

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/telemetry"
)

// TestReplayMemoryPerEvent measures what the replay ring holds per reading
// event (3 metrics) when it is full: with no client connected (nothing
// was sent, so nothing may be encoded), and once every event has been
// sent (each keeps its encoding, shared by the clients and resumes).
func TestReplayMemoryPerEvent(t *testing.T) {
	if testenv.RaceEnabled {
		t.Skip("heap measurement; skipped with -race")
	}
	const n = DefaultReplaySize
	ids, lookup := fleet(1000)
	ts := time.Now()

	base := testenv.HeapAfterGC()
	// FirstSeq as in production: seqs of 16 digits.
	h := newManualHub(t, func(o *Options) { o.Lookup = lookup; o.FirstSeq = uint64(ts.UnixMicro()) })
	for i := 0; i < n; i += 100 {
		// The batches are garbage once consumed, as ingest's are.
		batch := fleetBatch(ids, i)[:min(100, n-i)]
		for j := range batch {
			batch[j].Time = ts.Add(time.Duration(i+j) * time.Millisecond)
		}
		h.Consume(batch)
		h.flush()
	}
	full := testenv.HeapAfterGC()
	require.Equal(t, n, h.ringLen)
	for _, e := range h.ring {
		e.encoded()
	}
	sent := testenv.HeapAfterGC()
	runtime.KeepAlive(h)

	idle := float64(full-base) / n
	withEnc := float64(sent-base) / n
	t.Logf("replay ring of %d reading events (3 metrics): %.0f B/event with no client, %.0f B/event once all were sent (%.1f MB)",
		n, idle, withEnc, float64(sent-base)/1e6)
	require.LessOrEqual(t, idle, 300.0, "B/event with no client (635 when every event was encoded as published)")
	require.LessOrEqual(t, withEnc, 480.0, "B/event once sent")
}

// TestReplayMemoryPerStatusEvent measures what the replay ring holds per
// status event when it is full of them, with no client connected. At
// 100,000 devices the ring is about half status events (each device's
// "online" as it first reports), so they should cost no more than a
// reading.
func TestReplayMemoryPerStatusEvent(t *testing.T) {
	if testenv.RaceEnabled {
		t.Skip("heap measurement; skipped with -race")
	}
	const n = DefaultReplaySize
	ids, lookup := fleet(1000)
	ts := time.Now()
	statuses := []string{telemetry.StatusOnline, telemetry.StatusStale, telemetry.StatusOffline, telemetry.StatusUnknown, ""}

	base := testenv.HeapAfterGC()
	h := newManualHub(t, func(o *Options) { o.Lookup = lookup; o.FirstSeq = uint64(ts.UnixMicro()) })
	for i := range n {
		h.Status(telemetry.StatusEvent{DeviceID: ids[i%len(ids)], Status: statuses[i%4], Previous: statuses[(i+1)%5],
			Time: ts.Add(time.Duration(i) * time.Millisecond)})
		if i%100 == 99 {
			h.flush()
		}
	}
	h.flush()
	full := testenv.HeapAfterGC()
	require.Equal(t, n, h.ringLen)
	for _, e := range h.ring {
		e.encoded()
	}
	sent := testenv.HeapAfterGC()
	runtime.KeepAlive(h)

	idle := float64(full-base) / n
	withEnc := float64(sent-base) / n
	t.Logf("replay ring of %d status events: %.0f B/event with no client, %.0f B/event once all were sent (%.1f MB)",
		n, idle, withEnc, float64(sent-base)/1e6)
	require.LessOrEqual(t, idle, 200.0, "B/event with no client (281 when status and previous were behind x)")
	require.LessOrEqual(t, withEnc, 340.0, "B/event once sent")
}

// TestReplayMemoryPerOneReadingEvent is TestReplayMemoryPerEvent with the
// readings handed over as `infrawatch serve` gets them: one Consume per
// MQTT message, of one reading of 3 metrics, flushed every 2,000 readings.
func TestReplayMemoryPerOneReadingEvent(t *testing.T) {
	if testenv.RaceEnabled {
		t.Skip("heap measurement; skipped with -race")
	}
	const n = DefaultReplaySize
	ids, lookup := fleet(1000)
	ts := time.Now()

	base := testenv.HeapAfterGC()
	h := newManualHub(t, func(o *Options) { o.Lookup = lookup; o.FirstSeq = uint64(ts.UnixMicro()) })
	batch := fleetBatch(ids, 0)[:1]
	for i := range n {
		batch[0].DeviceID = ids[i%len(ids)]
		batch[0].Time = ts.Add(time.Duration(i) * time.Millisecond)
		h.Consume(batch)
		if i%2000 == 1999 {
			h.flush()
		}
	}
	h.flush()
	full := testenv.HeapAfterGC()
	require.Equal(t, n, h.ringLen)
	for _, e := range h.ring {
		e.encoded()
	}
	sent := testenv.HeapAfterGC()
	runtime.KeepAlive(h)

	idle := float64(full-base) / n
	withEnc := float64(sent-base) / n
	t.Logf("replay ring of %d reading events (3 metrics, one per Consume): %.0f B/event with no client, %.0f B/event once all were sent (%.1f MB)",
		n, idle, withEnc, float64(sent-base)/1e6)
	require.LessOrEqual(t, idle, 250.0, "B/event with no client (267 when the values were a second allocation and the place was in the event)")
	require.LessOrEqual(t, withEnc, 425.0, "B/event once sent (441 before the same change)")
}
