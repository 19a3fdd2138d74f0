package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Bounds of the websocket clients.
const (
	// wsConnectConcurrency bounds the websocket handshakes in progress.
	wsConnectConcurrency = 64
	// sentRing is how many publish times each device remembers, indexed by
	// the reading's ts (ms) modulo its size: a reading whose websocket
	// message arrives more than sentRing ms after the device's next
	// readings overwrote its slot counts as unmatched.
	sentRing = 8192
	// wsMaxMessage bounds one stream message the clients read (a snapshot
	// of a large fleet is the largest).
	wsMaxMessage = 64 << 20
)

// WSResult is what the websocket clients of a run measured.
type WSResult struct {
	Clients int `json:"clients"`
	// Connected clients were subscribed (their snapshot arrived) before
	// publishing started; ConnectS is how long that took.
	Connected int     `json:"connected"`
	ConnectS  float64 `json:"connect_s"`
	// ClosedByServer clients were disconnected during the run (the hub
	// drops a client that stays behind: close 4000).
	ClosedByServer int            `json:"closed_by_server"`
	CloseCodes     map[string]int `json:"close_codes,omitempty"`
	// Readings are the reading messages all clients received; Expected is
	// the stored readings times the connected clients (every client
	// subscribed to every device). The hub coalesces a behind client's
	// queued readings of a device, so Readings < Expected means coalescing
	// or dropped clients, not loss of stored data.
	Readings int64 `json:"readings"`
	Expected int64 `json:"expected"`
	// Matched readings had a known publish time; the latency quantiles are
	// over them (log buckets 2% wide).
	Matched int64   `json:"matched"`
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	P999Ms  float64 `json:"p999_ms"`
	MaxMs   float64 `json:"max_ms"`
	// From infrawatch's /metrics over the run.
	Coalesced      float64 `json:"coalesced"`
	ClientsDropped float64 `json:"clients_dropped"`
	SentByHub      float64 `json:"sent_by_hub"`
}

// latHist is a histogram of latencies in log buckets 2% wide from 1 µs.
type latHist struct {
	counts [1024]int64
	max    time.Duration
}

const latBucketsPerE = 50 // buckets per factor e: e^(1/50) ≈ 1.02

func (h *latHist) add(d time.Duration) {
	if d > h.max {
		h.max = d
	}
	us := float64(d) / float64(time.Microsecond)
	i := 0
	if us > 1 {
		i = min(len(h.counts)-1, int(math.Log(us)*latBucketsPerE)+1)
	}
	h.counts[i]++
}

func (h *latHist) merge(o *latHist) {
	for i, n := range o.counts {
		h.counts[i] += n
	}
	h.max = max(h.max, o.max)
}

func (h *latHist) total() int64 {
	var n int64
	for _, c := range h.counts {
		n += c
	}
	return n
}

// quantile returns the upper bound of the bucket holding the q-quantile,
// in ms; -1 when empty.
func (h *latHist) quantile(q float64) float64 {
	n := h.total()
	if n == 0 {
		return -1
	}
	rank := int64(math.Ceil(q * float64(n)))
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			upper := math.Exp(float64(i)/latBucketsPerE) / 1000 // µs → ms
			return math.Min(math.Round(upper*100)/100, ms(h.max.Seconds()))
		}
	}
	return ms(h.max.Seconds())
}

// sentTimes remembers when a device's recent readings were handed to MQTT,
// by their ts, for the websocket clients to look up.
type sentTimes struct {
	ts [sentRing]atomic.Int64 // reading ts, ms
	at [sentRing]atomic.Int64 // publish time, unix ns
}

func (s *sentTimes) record(ts int64, at time.Time) {
	i := ts & (sentRing - 1)
	s.ts[i].Store(0) // a reader between the stores sees no match, not a wrong one
	s.at[i].Store(at.UnixNano())
	s.ts[i].Store(ts)
}

func (s *sentTimes) lookup(ts int64) (int64, bool) {
	i := ts & (sentRing - 1)
	at := s.at[i].Load()
	return at, s.ts[i].Load() == ts
}

// wsFleet is the websocket clients of a run.
type wsFleet struct {
	clients []*wsClient
	devices map[string]*sentTimes
	wg      sync.WaitGroup
	stopped atomic.Bool
}

type wsClient struct {
	conn      *websocket.Conn
	hist      latHist
	readings  int64
	unmatched int64
	closeCode int // 0: ended by us
}

// openWS connects n clients to the stream of apiURL, subscribes each to
// the readings of all devices and waits for its snapshot, then starts
// their readers. The caller stops them with close.
func openWS(ctx context.Context, apiURL, token string, n int, devices map[string]*sentTimes) (*wsFleet, error) {
	u, err := url.Parse(apiURL)
	if err != nil {
		return nil, fmt.Errorf("stream URL: %w", err)
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	u.Path = "/api/v1/stream"
	u.RawQuery = url.Values{"token": {token}}.Encode()
	f := &wsFleet{clients: make([]*wsClient, n), devices: devices}
	dialer := &websocket.Dialer{HandshakeTimeout: 15 * time.Second, ReadBufferSize: 16 << 10, WriteBufferSize: 1024}
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, wsConnectConcurrency)
		mu       sync.Mutex
		firstErr error
	)
	for i := range f.clients {
		sem <- struct{}{}
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialStream(ctx, dialer, u.String())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("websocket client %d: %w", i, err)
				}
				return
			}
			f.clients[i] = &wsClient{conn: c}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		f.close()
		return nil, firstErr
	}
	for _, c := range f.clients {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.read(c)
		}()
	}
	return f, nil
}

// dialStream opens one stream connection (no Origin header: the server
// allows non-browser clients without one), subscribes to readings and
// reads up to the snapshot.
func dialStream(ctx context.Context, d *websocket.Dialer, u string) (*websocket.Conn, error) {
	c, resp, err := d.DialContext(ctx, u, http.Header{})
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			return nil, fmt.Errorf("dial %s: HTTP %d %s: %w", u, resp.StatusCode, body, err)
		}
		return nil, fmt.Errorf("dial stream: %w", err)
	}
	c.SetReadLimit(wsMaxMessage)
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","events":["reading"]}`)); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, msg, err := c.ReadMessage()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("wait for the snapshot: %w", err)
		}
		if bytes.HasPrefix(msg, []byte(`{"type":"snapshot"`)) {
			break
		}
		if bytes.HasPrefix(msg, []byte(`{"type":"error"`)) {
			c.Close()
			return nil, fmt.Errorf("subscribe: %s", msg)
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

var (
	readingPrefix = []byte(`{"type":"reading"`)
	deviceKey     = []byte(`"device_id":"`)
	tsKey         = []byte(`"ts":"`)
)

// read counts c's reading messages and their latency until the
// connection ends. gorilla's reader answers pings itself.
func (f *wsFleet) read(c *wsClient) {
	var buf bytes.Buffer
	for {
		_, r, err := c.conn.NextReader()
		if err != nil {
			if !f.stopped.Load() {
				c.closeCode = -1
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					c.closeCode = ce.Code
				}
			}
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			continue // the next NextReader reports the failure
		}
		now := time.Now()
		msg := buf.Bytes()
		if !bytes.HasPrefix(msg, readingPrefix) {
			continue
		}
		c.readings++
		id, ts, ok := parseReadingMsg(msg)
		if !ok {
			c.unmatched++
			continue
		}
		st := f.devices[id]
		if st == nil {
			c.unmatched++
			continue
		}
		at, ok := st.lookup(ts)
		if !ok {
			c.unmatched++
			continue
		}
		c.hist.add(now.Sub(time.Unix(0, at)))
	}
}

// parseReadingMsg finds the device id and the reading's ts (ms) in a
// stream reading message without decoding all of it.
func parseReadingMsg(msg []byte) (string, int64, bool) {
	i := bytes.Index(msg, deviceKey)
	if i < 0 {
		return "", 0, false
	}
	rest := msg[i+len(deviceKey):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return "", 0, false
	}
	id := string(rest[:j])
	k := bytes.Index(rest, tsKey)
	if k < 0 {
		return "", 0, false
	}
	rest = rest[k+len(tsKey):]
	j = bytes.IndexByte(rest, '"')
	if j < 0 {
		return "", 0, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(rest[:j]))
	if err != nil {
		return "", 0, false
	}
	return id, t.UnixMilli(), true
}

// close disconnects every client and waits for the readers.
func (f *wsFleet) close() {
	f.stopped.Store(true)
	for _, c := range f.clients {
		if c != nil {
			_ = c.conn.Close()
		}
	}
	f.wg.Wait()
}

// result stops the clients and sums what they measured.
func (f *wsFleet) result(stored int64) *WSResult {
	f.close()
	r := &WSResult{Clients: len(f.clients), Connected: len(f.clients)}
	var h latHist
	for _, c := range f.clients {
		h.merge(&c.hist)
		r.Readings += c.readings
		r.Matched += c.readings - c.unmatched
		if c.closeCode != 0 {
			r.ClosedByServer++
			if r.CloseCodes == nil {
				r.CloseCodes = map[string]int{}
			}
			r.CloseCodes[fmt.Sprint(c.closeCode)]++
		}
	}
	r.Expected = stored * int64(r.Connected)
	r.P50Ms, r.P99Ms, r.P999Ms = h.quantile(0.5), h.quantile(0.99), h.quantile(0.999)
	r.MaxMs = ms(h.max.Seconds())
	if h.total() == 0 {
		r.MaxMs = -1
	}
	return r
}
