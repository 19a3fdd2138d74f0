package alerts

import (
	"slices"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Reading order.
//
// Devices and gateways publish over QoS 1 with retries, from buffers, through
// several ingest workers: one device's readings can arrive a little out of
// order. The state machine judges each reading against the newest one it has
// evaluated (observe ignores older ones, so a late backlog cannot flip an
// alert back), and rate rules need consecutive readings, so evaluating in
// arrival order would give a different answer from the same data sorted.
//
// With Options.ReorderWindow > 0 the engine holds each device's readings in a
// small buffer sorted by reading time and evaluates a reading only once the
// device has sent one at least ReorderWindow newer, or once ReorderWindow of
// wall time has passed since the device's last message (Tick). Within the
// window, the outcome is that of the sorted stream. Timers (pending `for`,
// absence, folding) run on the same delayed clock, now - ReorderWindow, so a
// timer never overtakes a held reading. The cost is ReorderWindow of extra
// alert latency, one copy of each held reading, and a sorted insert that is an
// append for readings already in order.

// maxHeldPerDevice bounds one device's buffer: beyond it the oldest readings
// are evaluated early (a device sending thousands of readings inside the
// window is a backlog, already in order).
const maxHeldPerDevice = 4096

// heldReadings is one device's buffer. Under load every reading passes
// through one, so the buffer is reused rather than re-sliced away: released
// readings advance head, and the held ones move back to the front when
// that frees at least half of it; released readings' Values go back to the
// engine's spares (Engine.spareVals) for the next copies.
type heldReadings struct {
	buf     []telemetry.Reading // buf[head:] are held, sorted by Time, Values copied
	head    int
	newest  time.Time // newest reading time received
	arrived time.Time // wall time of the last message
}

// pending returns the held readings, oldest first.
func (h *heldReadings) pending() []telemetry.Reading { return h.buf[h.head:] }

// hold adds r, whose Values the caller copied into vals, in time order.
func (h *heldReadings) hold(r *telemetry.Reading, vals []telemetry.Value, now time.Time) {
	c := telemetry.Reading{DeviceID: r.DeviceID, Time: r.Time, Values: vals}
	if len(h.buf) == cap(h.buf) && h.head >= len(h.buf)/2 && h.head > 0 {
		n := copy(h.buf, h.buf[h.head:])
		clear(h.buf[n:])
		h.buf, h.head = h.buf[:n], 0
	}
	rs := h.pending()
	n := len(rs)
	if n == 0 || !c.Time.Before(rs[n-1].Time) {
		h.buf = append(h.buf, c)
	} else {
		// Stable: equal times keep arrival order.
		i, _ := slices.BinarySearchFunc(rs, c.Time, func(x telemetry.Reading, t time.Time) int {
			if x.Time.After(t) {
				return 1
			}
			return -1
		})
		h.buf = slices.Insert(h.buf, h.head+i, c)
	}
	if c.Time.After(h.newest) {
		h.newest = c.Time
	}
	h.arrived = now
}

// maxSpareVals bounds the engine's spare Values slices: about what one
// Consume releases, not what all devices hold.
const maxSpareVals = 4096

// copyValues returns a copy of vals in a spare slice when one is big
// enough. Caller holds e.mu.
func (e *Engine) copyValues(vals []telemetry.Value) []telemetry.Value {
	if n := len(e.spareVals); n > 0 {
		if s := e.spareVals[n-1]; cap(s) >= len(vals) {
			e.spareVals[n-1] = nil
			e.spareVals = e.spareVals[:n-1]
			return append(s[:0], vals...)
		}
	}
	return slices.Clone(vals)
}

// consumeOrdered buffers readings per device and evaluates those that are
// ReorderWindow older than their device's newest. Caller holds e.mu.
func (e *Engine) consumeOrdered(readings []telemetry.Reading, now time.Time) {
	w := e.o.ReorderWindow
	var touched []*heldReadings
	for i := range readings {
		r := &readings[i]
		h := e.held[r.DeviceID]
		if h == nil {
			h = &heldReadings{}
			e.held[r.DeviceID] = h
		}
		if len(touched) == 0 || touched[len(touched)-1] != h {
			touched = append(touched, h)
		}
		h.hold(r, e.copyValues(r.Values), now)
	}
	for _, h := range touched {
		e.release(h, h.newest.Add(-w), len(h.pending())-maxHeldPerDevice)
	}
}

// release evaluates, in time order, the held readings with Time <= upTo, and
// at least the first atLeast of them. An emptied buffer is forgotten.
func (e *Engine) release(h *heldReadings, upTo time.Time, atLeast int) {
	rs := h.pending()
	n := 0
	for n < len(rs) && (n < atLeast || !rs[n].Time.After(upTo)) {
		e.evaluate(&rs[n])
		// Evaluation keeps numbers, never the slice.
		if len(e.spareVals) < maxSpareVals {
			e.spareVals = append(e.spareVals, rs[n].Values)
		}
		n++
	}
	if n == 0 {
		return
	}
	if n == len(rs) {
		// Device id from the buffer: every entry has the same one.
		delete(e.held, rs[0].DeviceID)
		return
	}
	clear(rs[:n])
	h.head += n
}

// releaseQuiet evaluates everything held for devices that sent nothing for
// ReorderWindow of wall time: nothing older can still be on its way. Caller
// holds e.mu.
func (e *Engine) releaseQuiet(now time.Time) {
	cut := now.Add(-e.o.ReorderWindow)
	for _, h := range e.held {
		if !h.arrived.After(cut) {
			e.release(h, h.newest, len(h.pending()))
		}
	}
}

// releaseAll evaluates every held reading (shutdown). Caller holds e.mu.
func (e *Engine) releaseAll() {
	for _, h := range e.held {
		e.release(h, h.newest, len(h.pending()))
	}
}
