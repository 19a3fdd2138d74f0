package stream

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/infrawatch/infrawatch/telemetry"
)

// discardConn is a connection whose peer subscribed once and then only
// receives: it counts what the writer sends and discards it, so the
// benchmark measures the hub and the writers, not the network.
type discardConn struct {
	sub     []byte
	got     atomic.Int64
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
func (d *discardConn) SetWriteDeadline(time.Time) error  { return nil }

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
		return 1, d.sub, nil
	}
	<-d.closed
	return 0, nil, errors.New("closed")
}

func (d *discardConn) WriteMessage(int, []byte) error {
	d.got.Add(1)
	return nil
}

func (d *discardConn) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// BenchmarkFanout publishes one reading per op to 1,000 subscribed clients
// and waits until every client's writer has sent all of them.
func BenchmarkFanout(b *testing.B) {
	const clients = 1000
	h := newTestHub(b, func(o *Options) { o.QueueSize = 1 << 16 })
	conns := make([]*discardConn, clients)
	var wg sync.WaitGroup
	for i := range conns {
		conns[i] = newDiscardConn(`{"type":"subscribe"}`)
		wg.Add(1)
		go func() { defer wg.Done(); h.serve(conns[i], ServeOptions{Snapshot: func(Filter) any { return nil }}) }()
	}
	waitSent := func(n int64) {
		for _, c := range conns {
			for c.got.Load() < n {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
	waitSent(1) // every client has its snapshot: subscribed
	rd := []telemetry.Reading{reading("tc-1", 1, num("flow_vph", 1260), num("speed_kmh", 54.5))}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rd[0].Time = time.UnixMilli(int64(i))
		h.Consume(rd)
		if i%512 == 511 {
			waitSent(int64(i + 2)) // keep queues short, as fast clients do
		}
	}
	waitSent(int64(b.N + 1))
	b.StopTimer()
	b.ReportMetric(float64(b.N*clients)/b.Elapsed().Seconds(), "msgs/s")
	h.Close()
	wg.Wait()
}
