package stream

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/telemetry"
)

// ringMemory fills a hub's replay ring (DefaultReplaySize events) with fill
// and returns the heap per event it holds with no client connected
// (nothing was sent, so nothing may be encoded), and once every event has
// been sent (each keeps its encoding, shared by the clients and resumes).
func ringMemory(t *testing.T, what string, fill func(h *Hub, ids []string, ts time.Time)) (idle, withEnc float64) {
	t.Helper()
	if testenv.RaceEnabled {
		t.Skip("heap measurement; skipped with -race")
	}
	const n = DefaultReplaySize
	ids, lookup := fleet(1000)
	ts := time.Now()

	base := testenv.HeapAfterGC()
	// FirstSeq as in production: seqs of 16 digits.
	h := newManualHub(t, func(o *Options) { o.Lookup = lookup; o.FirstSeq = uint64(ts.UnixMicro()) })
	fill(h, ids, ts)
	h.flush()
	full := testenv.HeapAfterGC()
	require.Equal(t, n, h.ringLen)
	for _, e := range h.ring {
		e.encoded()
	}
	sent := testenv.HeapAfterGC()
	runtime.KeepAlive(h)

	idle = float64(full-base) / n
	withEnc = float64(sent-base) / n
	t.Logf("replay ring of %d %s: %.0f B/event with no client, %.0f B/event once all were sent (%.1f MB)",
		n, what, idle, withEnc, float64(sent-base)/1e6)
	return idle, withEnc
}

// TestReplayMemoryPerEvent: the ring full of reading events (3 metrics),
// consumed in batches of 100.
func TestReplayMemoryPerEvent(t *testing.T) {
	idle, withEnc := ringMemory(t, "reading events (3 metrics)", func(h *Hub, ids []string, ts time.Time) {
		for i := 0; i < DefaultReplaySize; i += 100 {
			// The batches are garbage once consumed, as ingest's are.
			batch := fleetBatch(ids, i)[:min(100, DefaultReplaySize-i)]
			for j := range batch {
				batch[j].Time = ts.Add(time.Duration(i+j) * time.Millisecond)
			}
			h.Consume(batch)
			h.flush()
		}
	})
	require.LessOrEqual(t, idle, 300.0, "B/event with no client (635 when every event was encoded as published)")
	require.LessOrEqual(t, withEnc, 480.0, "B/event once sent")
}

// TestReplayMemoryPerStatusEvent: the ring full of status events. At
// 100,000 devices the ring is about half status events (each device's
// "online" as it first reports), so they should cost no more than a
// reading.
func TestReplayMemoryPerStatusEvent(t *testing.T) {
	statuses := []string{telemetry.StatusOnline, telemetry.StatusStale, telemetry.StatusOffline, telemetry.StatusUnknown, ""}
	idle, withEnc := ringMemory(t, "status events", func(h *Hub, ids []string, ts time.Time) {
		for i := range DefaultReplaySize {
			h.Status(telemetry.StatusEvent{DeviceID: ids[i%len(ids)], Status: statuses[i%4], Previous: statuses[(i+1)%5],
				Time: ts.Add(time.Duration(i) * time.Millisecond)})
			if i%100 == 99 {
				h.flush()
			}
		}
	})
	require.LessOrEqual(t, idle, 200.0, "B/event with no client (281 when status and previous were behind x)")
	require.LessOrEqual(t, withEnc, 340.0, "B/event once sent")
}

// TestReplayMemoryPerOneReadingEvent: readings handed over as `infrawatch
// serve` gets them, one Consume per MQTT message, of one reading of 3
// metrics, flushed every 2,000 readings.
func TestReplayMemoryPerOneReadingEvent(t *testing.T) {
	idle, withEnc := ringMemory(t, "reading events (3 metrics, one per Consume)", func(h *Hub, ids []string, ts time.Time) {
		batch := fleetBatch(ids, 0)[:1]
		for i := range DefaultReplaySize {
			batch[0].DeviceID = ids[i%len(ids)]
			batch[0].Time = ts.Add(time.Duration(i) * time.Millisecond)
			h.Consume(batch)
			if i%2000 == 1999 {
				h.flush()
			}
		}
	})
	require.LessOrEqual(t, idle, 250.0, "B/event with no client (267 when the values were a second allocation and the place was in the event)")
	require.LessOrEqual(t, withEnc, 425.0, "B/event once sent (441 before the same change)")
}
