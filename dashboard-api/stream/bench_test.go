package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// discardConn is a connection whose peer subscribed once and then only
// receives: it parses the frames the writer sends (counting messages and
// the events in them, and remembering the newest seq) and discards them,
// so the benchmark measures the hub and the writers, not the network.
type discardConn struct {
	sub     []byte
	msgs    atomic.Int64 // websocket messages
	events  atomic.Int64 // events, inside batches too
	writes  atomic.Int64
	lastSeq atomic.Uint64
	closed  chan struct{}
	once    sync.Once
	readOne bool
}

func newDiscardConn(sub string) *discardConn {
	return &discardConn{sub: []byte(sub), closed: make(chan struct{})}
}

func (d *discardConn) SetReadLimit(int64)                {}
func (d *discardConn) SetReadDeadline(time.Time) error   { return nil }
func (d *discardConn) SetPongHandler(func(string) error) {}

// WriteControl answers a close at once, as a live peer would.
func (d *discardConn) WriteControl(typ int, _ []byte, _ time.Time) error {
	if typ == websocket.CloseMessage {
		_ = d.Close()
	}
	return nil
}

func (d *discardConn) ReadMessage() (int, []byte, error) {
	if !d.readOne {
		d.readOne = true
		return websocket.TextMessage, d.sub, nil
	}
	<-d.closed
	return 0, nil, errors.New("closed")
}

var (
	seqKey    = []byte(`"seq":`)
	typeEvent = []byte(`{"type":"`)
)

func (d *discardConn) WriteFrames(b []byte, _ time.Time) error {
	d.writes.Add(1)
	for len(b) > 0 {
		payload, rest, err := nextFrame(b)
		if err != nil {
			return err
		}
		b = rest
		d.msgs.Add(1)
		n := int64(bytes.Count(payload, typeEvent))
		if bytes.HasPrefix(payload, []byte(`{"type":"batch"`)) {
			n--
		}
		d.events.Add(n)
		if i := bytes.LastIndex(payload, seqKey); i >= 0 {
			rest := payload[i+len(seqKey):]
			j := bytes.IndexAny(rest, ",}")
			if s, err := strconv.ParseUint(string(rest[:j]), 10, 64); err == nil && s > d.lastSeq.Load() {
				d.lastSeq.Store(s)
			}
		}
	}
	return nil
}

// nextFrame splits off one unmasked, final text frame.
func nextFrame(b []byte) (payload, rest []byte, err error) {
	if len(b) < 2 || b[0] != finText || b[1]&0x80 != 0 {
		return nil, nil, errors.New("not a final unmasked text frame")
	}
	n, h := uint64(b[1]), 2
	switch n {
	case 126:
		n, h = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		n, h = binary.BigEndian.Uint64(b[2:]), 10
	}
	if uint64(len(b)-h) < n {
		return nil, nil, errors.New("short frame")
	}
	return b[h : h+int(n)], b[h+int(n):], nil
}

func (d *discardConn) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// connectDiscard serves n discarding clients that send sub, and waits until
// each has its snapshot. The cleanup closes the hub.
func connectDiscard(t testing.TB, h *Hub, n int, sub string) []*discardConn {
	t.Helper()
	conns := make([]*discardConn, n)
	var wg sync.WaitGroup
	for i := range conns {
		conns[i] = newDiscardConn(sub)
		wg.Add(1)
		go func() { defer wg.Done(); h.serve(conns[i], ServeOptions{Snapshot: func(Filter) any { return nil }}) }()
	}
	t.Cleanup(func() { h.Close(); wg.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for _, c := range conns {
		for c.msgs.Load() < 1 {
			require.True(t, time.Now().Before(deadline), "clients not subscribed")
			time.Sleep(time.Millisecond)
		}
	}
	return conns
}

// fannedOut is the seq of the newest event handed to the clients.
func fannedOut(h *Hub) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// cpuTime is the CPU the process has used (user + system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchDevices is the load tool's default fleet size.
const benchDevices = 100

func deviceIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "dev-" + strconv.Itoa(i)
	}
	return ids
}

// BenchmarkFanout publishes readings of 100 devices (one per op, in batches
// of 100 as ingest hands them over) to 2,000 subscribed clients and waits
// until every client's writer has sent the last one. ns/op is the cost per
// reading of the whole fan-out (all clients); events/s and msgs/s are what
// the clients received in total, writes/s the writes to their connections.
func BenchmarkFanout(b *testing.B) {
	for _, bc := range []struct {
		name, sub string
		clients   int
	}{
		{"clients=2000/unbatched", `{"type":"subscribe","events":["reading"]}`, 2000},
		{"clients=2000/batch", `{"type":"subscribe","events":["reading"],"batch":true}`, 2000},
		{"clients=200/unbatched", `{"type":"subscribe","events":["reading"]}`, 200},
	} {
		b.Run(bc.name, func(b *testing.B) {
			// No send budget: this measures the fan-out's cost, not the pacing.
			h := newTestHub(b, func(o *Options) { o.MaxSendRate = math.MaxInt32 })
			conns := connectDiscard(b, h, bc.clients, bc.sub)
			ids := deviceIDs(benchDevices)
			batch := make([]telemetry.Reading, 100)
			for i := range batch {
				batch[i] = reading(ids[i%benchDevices], 0, num("flow_vph", 1260), num("speed_kmh", 54.5), num("occupancy", 0.3))
			}
			cpu0 := cpuTime()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += len(batch) {
				n := min(len(batch), b.N-i)
				for j := range batch[:n] {
					batch[j].Time = time.UnixMilli(int64(i + j))
				}
				h.Consume(batch[:n])
				if (i/len(batch))%100 == 99 {
					// Stay below the intake bound: wait for the fan-out.
					for fannedOut(h) < h.Seq() {
						time.Sleep(100 * time.Microsecond)
					}
				}
			}
			final := h.Seq()
			for _, c := range conns {
				for c.lastSeq.Load() < final {
					time.Sleep(100 * time.Microsecond)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			var evs, msgs, writes int64
			for _, c := range conns {
				evs += c.events.Load()
				msgs += c.msgs.Load() - 1 // the snapshot
				writes += c.writes.Load() - 1
			}
			s := b.Elapsed().Seconds()
			b.ReportMetric(float64(evs)/s, "events/s")
			b.ReportMetric(float64(msgs)/s, "msgs/s")
			b.ReportMetric(float64(writes)/s, "writes/s")
			b.ReportMetric(testutil.ToFloat64(h.m.intakeDropped), "intake-dropped")
		})
	}
}

// latencyConn is a discardConn that also records, for every reading it is
// written, how long after its ts (the time it was published) the write
// happened.
type latencyConn struct {
	*discardConn
	mu   sync.Mutex
	lats []time.Duration
}

var tsField = []byte(`"ts":"`)

func (l *latencyConn) WriteFrames(b []byte, dl time.Time) error {
	now := time.Now()
	var lats []time.Duration
	for rest := b; ; {
		i := bytes.Index(rest, tsField)
		if i < 0 {
			break
		}
		rest = rest[i+len(tsField):]
		j := bytes.IndexByte(rest, '"')
		if t, err := time.Parse(time.RFC3339Nano, string(rest[:j])); err == nil {
			lats = append(lats, now.Sub(t))
		}
	}
	l.mu.Lock()
	l.lats = append(l.lats, lats...)
	l.mu.Unlock()
	return l.discardConn.WriteFrames(b, dl)
}

// BenchmarkFanoutLatency publishes 10,000 readings/s of 100 devices, in
// real time, to 2,000 batch clients for a few seconds and reports the
// quantiles of publish → write latency over the readings written, and
// the writes per client per second. b.N is ignored: one run per
// subtest (use -benchtime 1x).
func BenchmarkFanoutLatency(b *testing.B) {
	for _, bc := range []struct {
		name     string
		clients  int
		sites    int // each client watches one site: ids i%sites
		interval time.Duration
	}{
		{"clients=2000/all/interval=50ms", 2000, 1, 50 * time.Millisecond},
		{"clients=2000/all/interval=20ms", 2000, 1, 20 * time.Millisecond},
		{"clients=2000/site/interval=50ms", 2000, 10, 50 * time.Millisecond},
		{"clients=2000/site/interval=20ms", 2000, 10, 20 * time.Millisecond},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ids, lookup := fleet(benchDevices)
			h := newTestHub(b, func(o *Options) {
				o.Lookup = lookup
				o.FlushInterval = bc.interval
			})
			conns := make([]*latencyConn, bc.clients)
			var wg sync.WaitGroup
			for i := range conns {
				sub := `{"type":"subscribe","events":["reading"],"batch":true}`
				if bc.sites > 1 {
					var devs []string
					for j, id := range ids {
						if j%bc.sites == i%bc.sites {
							devs = append(devs, strconv.Quote(id))
						}
					}
					sub = `{"type":"subscribe","events":["reading"],"batch":true,"devices":[` + strings.Join(devs, ",") + `]}`
				}
				conns[i] = &latencyConn{discardConn: newDiscardConn(sub)}
				wg.Add(1)
				go func() { defer wg.Done(); h.serve(conns[i], ServeOptions{Snapshot: func(Filter) any { return nil }}) }()
			}
			b.Cleanup(func() { h.Close(); wg.Wait() })
			for _, c := range conns {
				for c.msgs.Load() < 1 {
					time.Sleep(time.Millisecond)
				}
			}
			const rate, dur, per = 10000, 3 * time.Second, 10 // readings/s; batches of 10 every ms
			cpu0 := cpuTime()
			b.ResetTimer()
			start := time.Now()
			tick := time.NewTicker(time.Millisecond)
			n := 0
			for now := range tick.C {
				if now.Sub(start) > dur {
					break
				}
				want := int(now.Sub(start).Seconds() * rate)
				for n < want {
					batch := make([]telemetry.Reading, 0, per)
					t := time.Now()
					for range min(per, want-n) {
						batch = append(batch, reading(ids[n%benchDevices], 0, num("flow_vph", 1260), num("speed_kmh", 54.5)))
						batch[len(batch)-1].Time = t
						n++
					}
					h.Consume(batch)
				}
			}
			tick.Stop()
			b.StopTimer()
			cpu := cpuTime() - cpu0
			var all []time.Duration
			var writes int64
			for _, c := range conns {
				c.mu.Lock()
				all = append(all, c.lats...)
				c.mu.Unlock()
				writes += c.writes.Load() - 1
			}
			slices.Sort(all)
			q := func(p float64) float64 {
				if len(all) == 0 {
					return -1
				}
				return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
			}
			b.ReportMetric(q(0.5), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(float64(writes)/float64(bc.clients)/dur.Seconds(), "writes/client/s")
			b.ReportMetric(float64(len(all))/dur.Seconds(), "readings-written/s")
			b.ReportMetric(cpu.Seconds()/dur.Seconds(), "cores")
		})
	}
}

// fleet returns n device ids and a Lookup that places each of them (a
// domain, a site and a location), as the registry does.
func fleet(n int) ([]string, func(string) (*telemetry.Device, bool)) {
	ids := deviceIDs(n)
	devs := make(map[string]*telemetry.Device, n)
	for i, id := range ids {
		devs[id] = &telemetry.Device{ID: id, Slot: uint32(i), Located: true, Lat: 50 + float64(i%100)/100, Lon: 5 + float64(i%70)/100, Profile: &telemetry.Profile{Domain: "roads", Site: "site-" + strconv.Itoa(i%50)}}
	}
	return ids, func(id string) (*telemetry.Device, bool) {
		d, ok := devs[id]
		return d, ok
	}
}

// fleetBatch is a batch of 100 readings of 3 metrics each, of consecutive
// devices of ids from first on.
func fleetBatch(ids []string, first int) []telemetry.Reading {
	batch := make([]telemetry.Reading, 100)
	for j := range batch {
		batch[j] = reading(ids[(first+j)%len(ids)], 0, num("flow_vph", 1260), num("speed_kmh", 54.5), num("occupancy", 0.3))
	}
	return batch
}

// BenchmarkConsumeFlushNoClients is the stream's cost to ingest when no
// client is connected: Consume of batches of 100 readings (3 metrics
// each, 1,000 devices) and the fan-out's flush of each batch, on the
// calling goroutine. ns/op is per reading; nothing is sent, so nothing
// needs encoding.
func BenchmarkConsumeFlushNoClients(b *testing.B) {
	ids, lookup := fleet(1000)
	h := newManualHub(b, func(o *Options) { o.Lookup = lookup })
	batch := fleetBatch(ids, 0)
	ts := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(batch) {
		n := min(len(batch), b.N-i)
		for j := range batch[:n] {
			batch[j].DeviceID = ids[(i+j)%len(ids)]
			batch[j].Time = ts.Add(time.Duration(i+j) * time.Millisecond)
		}
		h.Consume(batch[:n])
		h.flush()
	}
}

// BenchmarkConsumeOneReadingNoClients is the stream's cost to ingest as
// `infrawatch serve` sees it: one Consume per MQTT message, of one reading
// of 3 metrics (100 devices), with no client connected. The fan-out's
// flush runs on the calling goroutine every 2,000 readings (50 ms at
// 40,000 readings/s), so ns/op and B/op are per reading, flush included.
func BenchmarkConsumeOneReadingNoClients(b *testing.B) {
	ids, lookup := fleet(benchDevices)
	h := newManualHub(b, func(o *Options) { o.Lookup = lookup })
	batch := fleetBatch(ids, 0)[:1]
	ts := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		batch[0].DeviceID = ids[i%len(ids)]
		batch[0].Time = ts.Add(time.Duration(i) * time.Millisecond)
		h.Consume(batch)
		if i%2000 == 1999 {
			h.flush()
		}
	}
}
