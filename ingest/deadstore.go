package ingest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// StoredDeadLetter is a dead letter kept in memory for listing and replay.
type StoredDeadLetter struct {
	// ID is unique within the process, increasing with time.
	ID uint64 `json:"id"`
	DeadLetter
	// Replayable is false when the original message cannot be run again:
	// its payload was cut (too_large), or it was a batch InfluxDB refused
	// after it left the spool (the payload is then line protocol).
	Replayable bool `json:"replayable"`

	msg     uint64 // the message it came from: several dead letters may share one
	payload []byte
	size    int
	// rest are the other entries of msg that take removed with this one,
	// so that a replay that cannot queue the message puts them all back.
	rest []*StoredDeadLetter
}

// DeadLetterFilter selects stored dead letters; empty fields match all.
type DeadLetterFilter struct {
	Reason   string
	DeviceID string
	// Limit bounds the answer (newest first); 0 means all.
	Limit int
}

// ReplaySelector chooses the dead letters to replay: either IDs, or all
// matching Reason (and DeviceID, when set).
type ReplaySelector struct {
	IDs      []uint64
	Reason   string
	DeviceID string
}

// ReplayResult says what a replay did.
type ReplayResult struct {
	// Replayed is the number of messages run through ingest again (several
	// dead letters of one message replay it once).
	Replayed int `json:"replayed"`
	// NotFound are requested IDs not (or no longer) in the store.
	NotFound []uint64 `json:"not_found"`
	// NotReplayable are requested IDs whose message cannot be run again.
	NotReplayable []uint64 `json:"not_replayable"`
}

// ErrNotRunning is returned by ReplayDeadLetters when Run is not running.
var ErrNotRunning = errors.New("ingest: not running")

// deadStore is a bounded ring of dead letters: at most size entries and
// maxBytes of payload; the oldest go first. Entries taken out for replay
// leave a hole (nil) that the ring overwrites in turn.
type deadStore struct {
	mu       sync.Mutex
	ring     []*StoredDeadLetter
	head, n  int // oldest slot, slots in use (holes included)
	live     int
	bytes    int
	maxBytes int
	nextID   uint64
}

func newDeadStore(size, maxBytes int) *deadStore {
	return &deadStore{ring: make([]*StoredDeadLetter, size), maxBytes: maxBytes}
}

// entryOverhead approximates the memory of an entry besides its payload.
const entryOverhead = 256

func (s *deadStore) add(dl deadLetter, msg uint64, replayable bool) {
	e := &StoredDeadLetter{DeadLetter: dl.DeadLetter, Replayable: replayable, msg: msg, payload: dl.payload}
	e.Payload, e.PayloadEncoding = "", ""
	e.size = len(dl.payload) + len(dl.Error) + len(dl.Topic) + entryOverhead
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	e.ID = s.nextID
	for s.n > 0 && (s.n == len(s.ring) || s.bytes+e.size > s.maxBytes) {
		s.evictOldest()
	}
	s.ring[(s.head+s.n)%len(s.ring)] = e
	s.n++
	s.live++
	s.bytes += e.size
}

func (s *deadStore) evictOldest() {
	if e := s.ring[s.head]; e != nil {
		s.bytes -= e.size
		s.live--
		s.ring[s.head] = nil
	}
	s.head = (s.head + 1) % len(s.ring)
	s.n--
}

func (s *deadStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

// list returns copies of the matching entries, newest first, with their
// payloads rendered.
func (s *deadStore) list(f DeadLetterFilter) []StoredDeadLetter {
	s.mu.Lock()
	var out []StoredDeadLetter
	for i := s.n - 1; i >= 0; i-- {
		e := s.ring[(s.head+i)%len(s.ring)]
		if e == nil || (f.Reason != "" && e.Reason != f.Reason) || (f.DeviceID != "" && e.DeviceID != f.DeviceID) {
			continue
		}
		out = append(out, *e)
		if f.Limit > 0 && len(out) == f.Limit {
			break
		}
	}
	s.mu.Unlock()
	for i := range out {
		out[i].Payload, out[i].PayloadEncoding = renderPayload(out[i].payload)
		out[i].payload = nil
	}
	return out
}

// take removes the selected entries, and every other entry of the same
// messages (the replay produces fresh dead letters for what still fails),
// returning one entry per message to replay, oldest first.
func (s *deadStore) take(sel ReplaySelector) (replay []*StoredDeadLetter, res ReplayResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[uint64]bool{}
	for _, id := range sel.IDs {
		want[id] = true
	}
	msgs := map[uint64]bool{}
	found := map[uint64]bool{}
	for i := 0; i < s.n; i++ {
		e := s.ring[(s.head+i)%len(s.ring)]
		if e == nil {
			continue
		}
		var hit bool
		if len(sel.IDs) > 0 {
			hit = want[e.ID]
		} else {
			hit = e.Reason == sel.Reason && (sel.DeviceID == "" || e.DeviceID == sel.DeviceID)
		}
		if !hit {
			continue
		}
		found[e.ID] = true
		if !e.Replayable {
			if len(sel.IDs) > 0 {
				res.NotReplayable = append(res.NotReplayable, e.ID)
			}
			continue
		}
		msgs[e.msg] = true
	}
	for _, id := range sel.IDs {
		if !found[id] {
			res.NotFound = append(res.NotFound, id)
		}
	}
	seen := map[uint64]*StoredDeadLetter{}
	for i := 0; i < s.n; i++ {
		slot := (s.head + i) % len(s.ring)
		e := s.ring[slot]
		if e == nil || !msgs[e.msg] {
			continue
		}
		if first, ok := seen[e.msg]; ok {
			first.rest = append(first.rest, e)
		} else {
			seen[e.msg] = e
			replay = append(replay, e)
		}
		s.ring[slot] = nil
		s.bytes -= e.size
		s.live--
	}
	slices.Sort(res.NotFound)
	slices.Sort(res.NotReplayable)
	return replay, res
}

// DeadLetters lists the dead letters kept in memory (the newest
// Options.DeadLetterStoreSize, within DeadLetterStoreBytes), newest first.
func (in *Ingester) DeadLetters(f DeadLetterFilter) []StoredDeadLetter {
	return in.dead.list(f)
}

// ReplayDeadLetters runs the selected dead letters' messages through
// ingest again, as if the broker had delivered them now: after the cause
// is fixed (the device registered, its rate raised), they are stored; what
// still fails is dead-lettered again, with a new ID. A message several dead
// letters came from (a gateway message, or one with bad readings) is run
// once, and its good readings are written again: the same points, so
// nothing is duplicated. Replayed entries leave the store. It returns
// once every message is queued (the writer stores them shortly after).
func (in *Ingester) ReplayDeadLetters(ctx context.Context, sel ReplaySelector) (ReplayResult, error) {
	if len(sel.IDs) == 0 && sel.Reason == "" {
		return ReplayResult{}, errors.New("ingest: replay needs ids or a reason")
	}
	if !in.started.Load() {
		return ReplayResult{}, ErrNotRunning
	}
	// Held like Deliver's: Run drains the inboxes of queued replays once
	// it holds the write lock, so none is queued after that.
	in.delivering.RLock()
	defer in.delivering.RUnlock()
	select {
	case <-in.stopping:
		return ReplayResult{}, ErrNotRunning
	default:
	}
	replay, res := in.dead.take(sel)
	for i, e := range replay {
		m := &replayMessage{entry: e}
		_, id := parseTopic(e.Topic)
		select {
		case in.inbox[shard(id, len(in.inbox))] <- inboxItem{m: m}:
			res.Replayed++
			in.m.deadLettersReplayed.Inc()
		case <-ctx.Done():
			in.putBack(replay[i:])
			return res, fmt.Errorf("ingest: replay dead letters: %w", ctx.Err())
		case <-in.stopping:
			in.putBack(replay[i:])
			return res, ErrNotRunning
		}
	}
	return res, nil
}

// putBack returns entries a replay could not run, with the other entries
// of their messages, to the store.
func (in *Ingester) putBack(es []*StoredDeadLetter) {
	for _, e := range es {
		in.dead.add(deadLetter{DeadLetter: e.DeadLetter, payload: e.payload}, e.msg, e.Replayable)
		for _, x := range e.rest {
			in.dead.add(deadLetter{DeadLetter: x.DeadLetter, payload: x.payload}, x.msg, x.Replayable)
		}
	}
}

// requeueReplays puts the replayed messages still in the inboxes when the
// workers stopped back in the store: unlike a broker's message, nothing
// would deliver them again. Caller holds delivering's write lock, after
// the workers ended.
func (in *Ingester) requeueReplays() {
	for _, inbox := range in.inbox {
		for len(inbox) > 0 {
			if rm, ok := (<-inbox).m.(*replayMessage); ok {
				in.putBack([]*StoredDeadLetter{rm.entry})
			}
		}
	}
}

// replayMessage is a stored dead letter's message, run again. It needs no
// acknowledgement: nothing waits for one. Its entry's ReceivedAt is when
// the broker first delivered it: the time of its readings without ts, and
// of its dead letters if it fails again.
type replayMessage struct {
	entry *StoredDeadLetter
}

func (m *replayMessage) Duplicate() bool   { return false }
func (m *replayMessage) Qos() byte         { return 1 }
func (m *replayMessage) Retained() bool    { return false }
func (m *replayMessage) Topic() string     { return m.entry.Topic }
func (m *replayMessage) MessageID() uint16 { return 0 }
func (m *replayMessage) Payload() []byte   { return m.entry.payload }
func (m *replayMessage) Ack()              {}

// truncatePayload bounds what a dead letter keeps of a payload: a copy of
// the first max bytes when it is longer (a slice would keep the whole
// original alive), else the payload itself.
func truncatePayload(p []byte, max int) ([]byte, bool) {
	if len(p) <= max {
		return p, false
	}
	return append([]byte(nil), p[:max]...), true
}
