package stream

import (
	"encoding/binary"
	"math"
	"strconv"
	"sync"
)

// msgBatch is the type of a batch message: several events in one frame, for
// clients that subscribed with "batch": true.
const msgBatch = "batch"

// chunk is a run of events, in seq order, bound for one or more clients. The
// fan-out builds one per group and flush interval and shares it by pointer
// with every client of the group; it is immutable once queued, and its
// frames are built at most once per form, by the first writer that needs
// them, from the events' shared encodings.
type chunk struct {
	evs []*event
	// replay is a resume's backlog: sent whole, neither counted against
	// the queue bound nor coalesced (the ring bounds it).
	replay bool
	// coalesced is how many readings were coalesced away to make it, for
	// the metric (counted once per client that gets it).
	coalesced int

	framesOnce, batchOnce sync.Once
	frames, batch         []byte // one frame per event; one batch frame
}

// bytes returns the chunk as websocket frames in the client's form.
func (ch *chunk) bytes(batch bool) []byte {
	if batch {
		ch.batchOnce.Do(func() { ch.batch = appendBatchFrame(nil, ch.evs) })
		return ch.batch
	}
	ch.framesOnce.Do(func() { ch.frames = appendEventFrames(nil, ch.evs) })
	return ch.frames
}

// Websocket framing (RFC 6455 §5.2) of an unfragmented, unmasked,
// uncompressed text frame, as a server sends it. The hub writes frames
// itself so that a client's whole drain (many events) goes out in one
// write: gorilla's writer makes one write system call per message.
const (
	finText       = 0x81 // FIN + opcode 1 (text)
	maxHeaderSize = 10
)

func appendFrameHeader(b []byte, n int) []byte {
	switch {
	case n < 126:
		return append(b, finText, byte(n))
	case n <= 0xffff:
		return append(b, finText, 126, byte(n>>8), byte(n))
	default:
		b = append(b, finText, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// appendFrame appends data as one text frame.
func appendFrame(b, data []byte) []byte {
	return append(appendFrameHeader(b, len(data)), data...)
}

// appendEventFrames appends one frame per event (the unbatched protocol).
func appendEventFrames(b []byte, evs []*event) []byte {
	for _, e := range evs {
		b = appendFrame(b, e.encoded())
	}
	return b
}

// appendBatchFrame appends {"type":"batch","seq":<last>,"events":[...]} as
// one frame, concatenating the events' shared encodings.
func appendBatchFrame(b []byte, evs []*event) []byte {
	if len(evs) == 0 {
		return b
	}
	last := evs[len(evs)-1].seq
	var digits [20]byte
	seq := strconv.AppendUint(digits[:0], last, 10)
	const head, mid, tail = `{"type":"batch","seq":`, `,"events":[`, `]}`
	n := len(head) + len(seq) + len(mid) + len(tail) + len(evs) - 1
	for _, e := range evs {
		n += len(e.encoded())
	}
	b = appendFrameHeader(b, n)
	b = append(b, head...)
	b = append(b, seq...)
	b = append(b, mid...)
	for i, e := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.encoded()...)
	}
	return append(b, tail...)
}

// noDev is the slot of a device the registry does not hold (any more): its
// readings are not coalesced.
const noDev = math.MaxUint32

// devScratch is coalesce's scratch space: where in its output each device
// (by its registry slot, event.slot) has its newest reading, valid when
// stamped with the current call's stamp. The registry's numbering spares
// every coalesce the hashing of device ids, and the hub a table of its own.
type devScratch struct {
	pos   []int32
	stamp []uint32
	cur   uint32
}

// coalesce keeps every status and alert event and, of each device's
// readings, one at the place of the last: the newest values by ts, with the
// metrics of the others that it lacks merged in; order stays seq order. It
// returns a new slice (evs is shared) and how many readings it removed.
// seen is scratch space.
func coalesce(evs []*event, seen *devScratch) ([]*event, int) {
	seen.cur++
	if seen.cur == 0 { // wrapped: old stamps could match
		clear(seen.stamp)
		seen.cur = 1
	}
	out := make([]*event, len(evs))
	copy(out, evs)
	dropped := 0
	for i := len(out) - 1; i >= 0; i-- {
		e := out[i]
		if e.kind != kindReading {
			continue
		}
		dev := e.slot()
		if dev == noDev {
			continue
		}
		if int(dev) >= len(seen.pos) {
			n := max(int(dev)+1, 2*len(seen.pos))
			seen.pos = append(seen.pos, make([]int32, n-len(seen.pos))...)
			seen.stamp = append(seen.stamp, make([]uint32, n-len(seen.stamp))...)
		}
		if seen.stamp[dev] != seen.cur {
			seen.stamp[dev], seen.pos[dev] = seen.cur, int32(i)
			continue
		}
		j := seen.pos[dev]
		if out[j].deviceID != e.deviceID {
			// A slot freed by a delete and taken by a new device, both
			// in this run: from here on (older events) the slot's
			// readings are the deleted device's.
			seen.pos[dev] = int32(i)
			continue
		}
		out[j] = out[j].coalescedWith(e)
		out[i] = nil
		dropped++
	}
	if dropped == 0 {
		return out, 0
	}
	n := 0
	for _, e := range out {
		if e != nil {
			out[n] = e
			n++
		}
	}
	clear(out[n:])
	return out[:n], dropped
}
