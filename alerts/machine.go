package alerts

import (
	"container/heap"
	"time"
)

// phase is where one (rule, device) series stands. It is the state machine
// that Engine and Backtest share; Alert.State adds acknowledgement on top.
type phase uint8

const (
	phaseIdle    phase = iota // no alert
	phasePending              // condition holds, waiting for `for`
	phaseOpen                 // alert firing or acknowledged
)

// outcome is what one step of the machine did.
type outcome uint8

const (
	noChange outcome = iota
	toPending
	toFiring
	toResolved
	pendingDropped
)

// series is the evaluation state of one rule on one device.
type series struct {
	rule, device string
	phase        phase
	activeAt     time.Time // when the condition began to hold (reading time)
	lastT        time.Time // time of the newest reading evaluated
	lastV        float64   // newest evaluated value (the rate, for rate rules)

	// rate: the previous raw reading.
	hasPrev bool
	prevT   time.Time
	prevV   float64

	// absence: the newest reading time seen.
	lastSeen time.Time
	// heardAt is the engine's clock when the reading that started the
	// timer (absence: the newest one; pending: the first bad one) was
	// evaluated; zero in Backtest. Timers count `for` from the later of it
	// and the reading's own time, so a backlog of old readings (a gateway
	// back from an outage, a device with a slow clock) does not make every
	// Tick fire an absence alert that the next reading resolves, nor fire
	// a pending alert that the backlog's next reading would have cleared.
	heardAt time.Time

	alert   *Alert    // pending or open alert, nil when idle
	foldAt  time.Time // notification held until then for dependency folding
	reackAt time.Time // next re-notification of an acknowledged alert

	// due orders s in the timer heap: the earliest time its timers may
	// have something to do, a lower bound (see timerHeap.schedule).
	due  time.Time
	hidx int // index in the timer heap, -1 when absent
}

// observe advances a threshold or rate series by one value at reading time
// t. It is the one transition function for value rules:
//
//	idle    --bad, for==0-->          open (toFiring)
//	idle    --bad-->                  pending (toPending)
//	pending --!bad-->                 idle (pendingDropped)  a blip shorter than `for`
//	pending --bad, t-activeAt>=for--> open (toFiring)
//	open    --cleared-->              idle (toResolved)
//
// An open alert in the hysteresis band (neither bad nor cleared) stays open,
// and an idle series in the band stays idle: that is what stops flapping.
// Readings older than the newest one evaluated are ignored, so a late
// backlog cannot flip the state back (the Engine keeps this rule for
// series it has dropped or not yet loaded: Engine.lateReading).
func observe(s *series, c *compiled, t time.Time, v float64) outcome {
	if !s.lastT.IsZero() && t.Before(s.lastT) {
		return noChange
	}
	s.lastT, s.lastV = t, v
	switch s.phase {
	case phaseIdle:
		if !c.bad(v) {
			return noChange
		}
		s.activeAt = t
		if c.For <= 0 {
			s.phase = phaseOpen
			return toFiring
		}
		s.phase = phasePending
		return toPending
	case phasePending:
		if !c.bad(v) {
			s.phase = phaseIdle
			return pendingDropped
		}
		if !t.Before(s.activeAt.Add(c.For.D())) {
			s.phase = phaseOpen
			return toFiring
		}
	case phaseOpen:
		if c.cleared(v) {
			s.phase = phaseIdle
			return toResolved
		}
	}
	return noChange
}

// rate derives the change per minute between the previous reading and this
// one (by reading time). It reports false for the first reading and for
// readings not newer than the previous one.
func (s *series) rate(t time.Time, v float64) (float64, bool) {
	if s.hasPrev && !t.After(s.prevT) {
		return 0, false
	}
	prevT, prevV, had := s.prevT, s.prevV, s.hasPrev
	s.hasPrev, s.prevT, s.prevV = true, t, v
	if !had {
		return 0, false
	}
	return (v - prevV) / t.Sub(prevT).Minutes(), true
}

// seen records a reading for an absence series; an open absence alert
// resolves on it.
func seen(s *series, t time.Time) outcome {
	if t.After(s.lastSeen) {
		s.lastSeen = t
	}
	if s.phase == phaseOpen {
		s.phase = phaseIdle
		return toResolved
	}
	return noChange
}

// since is when a timer's `for` starts counting for reading time t: t, or
// later if the engine evaluated that reading later (heardAt).
func (s *series) since(t time.Time) time.Time {
	if s.heardAt.After(t) {
		return s.heardAt
	}
	return t
}

// expire advances a series at time now when no reading arrived: pending
// fires once `for` has elapsed (the condition still holds as far as the
// newest reading says), and absence fires `for` after the last reading.
func expire(s *series, c *compiled, now time.Time) outcome {
	switch {
	case s.phase == phasePending && !now.Before(s.since(s.activeAt).Add(c.For.D())):
		s.phase = phaseOpen
		return toFiring
	case c.Kind == KindAbsence && s.phase == phaseIdle && !s.lastSeen.IsZero() &&
		!now.Before(s.since(s.lastSeen).Add(c.For.D())):
		s.phase = phaseOpen
		s.activeAt = s.lastSeen
		return toFiring
	}
	return noChange
}

// nextDue is the earliest time at which expire or a held notification has
// something to do for s; zero when nothing is scheduled.
func (s *series) nextDue(c *compiled) time.Time {
	var due time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (due.IsZero() || t.Before(due)) {
			due = t
		}
	}
	if c != nil {
		if s.phase == phasePending {
			consider(s.since(s.activeAt).Add(c.For.D()))
		}
		if c.Kind == KindAbsence && s.phase == phaseIdle && !s.lastSeen.IsZero() {
			consider(s.since(s.lastSeen).Add(c.For.D()))
		}
	}
	consider(s.foldAt)
	consider(s.reackAt)
	return due
}

// timerHeap is a min-heap of series by deadline: one entry per series at
// most, moved in place when the deadline comes earlier, so Tick touches only
// what is (or may be) due.
type timerHeap []*series

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}
func (h *timerHeap) Push(x any) {
	s := x.(*series)
	s.hidx = len(*h)
	*h = append(*h, s)
}
func (h *timerHeap) Pop() any {
	old := *h
	n := len(old)
	s := old[n-1]
	old[n-1] = nil
	s.hidx = -1
	*h = old[:n-1]
	return s
}

// schedule puts s in the heap at due, moves it earlier, or removes it
// (zero due). A later due leaves s where it is: Tick meets it early, finds
// nothing to do and moves it to its real deadline then (move). Every reading
// pushes an absence rule's deadline later, and moving the series down the
// heap on each one was 1.6 % of the process at 40,000 readings/s; now it
// moves about once per `for` period.
func (h *timerHeap) schedule(s *series, due time.Time) {
	if s.hidx >= 0 && !due.IsZero() && !due.Before(s.due) {
		return // postponed: s.due stays a lower bound of the real deadline
	}
	s.due = due
	switch {
	case due.IsZero() && s.hidx >= 0:
		heap.Remove(h, s.hidx)
	case due.IsZero():
	case s.hidx >= 0:
		heap.Fix(h, s.hidx)
	default:
		heap.Push(h, s)
	}
}

// move puts s in the heap at exactly due (removes it when zero): Tick uses
// it once it has brought s up to date, so that s leaves the top.
func (h *timerHeap) move(s *series, due time.Time) {
	if s.hidx >= 0 && !due.IsZero() {
		s.due = due
		heap.Fix(h, s.hidx)
		return
	}
	h.schedule(s, due)
}
