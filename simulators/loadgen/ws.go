package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
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
	// Subscribe is what each client watched: WSAll or WSSite.
	Subscribe string `json:"subscribe"`
	// Frames are the websocket messages (batches) the clients received.
	Frames int64 `json:"frames"`
	// Readings are the reading events all clients received; Expected is
	// the stored readings of the devices each client watched, summed over
	// the connected clients. The hub coalesces a client's readings of a
	// device to the newest, so Readings < Expected means coalescing or
	// dropped clients, not loss of stored data.
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

	// share is Expected per stored reading: the sum over the clients of
	// the fraction of the devices each watches.
	share float64
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
	nDevs   int
	devices map[string]*sentTimes
	wg      sync.WaitGroup
	stopped atomic.Bool
}

type wsClient struct {
	conn      *websocket.Conn
	watched   int // devices it subscribed to
	hist      latHist
	frames    int64
	readings  int64
	unmatched int64
	closeCode int // 0: ended by us
}

// wsSubscription is client i's subscribe message and how many devices it
// watches: every device (WSAll), or slice i mod (len(ids)/WSSiteDevices)
// of ids (WSSite). Batch mode, as the dashboard page subscribes.
func wsSubscription(mode string, ids []string, i int) ([]byte, int) {
	msg := struct {
		Type    string   `json:"type"`
		Batch   bool     `json:"batch"`
		Events  []string `json:"events"`
		Devices []string `json:"devices,omitempty"`
	}{Type: "subscribe", Batch: true, Events: []string{"reading"}}
	watched := len(ids)
	if mode == WSSite && len(ids) > WSSiteDevices {
		sites := len(ids) / WSSiteDevices
		s := i % sites
		end := (s + 1) * WSSiteDevices
		if s == sites-1 {
			end = len(ids) // the last site takes the remainder
		}
		msg.Devices = ids[s*WSSiteDevices : end]
		watched = len(msg.Devices)
	}
	b, _ := json.Marshal(msg) // strings only: cannot fail
	return b, watched
}

// openWS connects n clients to the stream of apiURL, subscribes each (see
// wsSubscription) and waits for its snapshot, then starts their readers.
// The caller stops them with close.
func openWS(ctx context.Context, apiURL, token string, n int, mode string, ids []string, devices map[string]*sentTimes) (*wsFleet, error) {
	u, err := url.Parse(apiURL)
	if err != nil {
		return nil, fmt.Errorf("stream URL: %w", err)
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	u.Path = "/api/v1/stream"
	u.RawQuery = url.Values{"token": {token}}.Encode()
	f := &wsFleet{clients: make([]*wsClient, n), nDevs: len(ids), devices: devices}
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
			sub, watched := wsSubscription(mode, ids, i)
			c, err := dialStream(ctx, dialer, u.String(), sub)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("websocket client %d: %w", i, err)
				}
				return
			}
			f.clients[i] = &wsClient{conn: c, watched: watched}
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
// allows non-browser clients without one), sends the subscription and
// reads up to the snapshot.
func dialStream(ctx context.Context, d *websocket.Dialer, u string, sub []byte) (*websocket.Conn, error) {
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
	if err := c.WriteMessage(websocket.TextMessage, sub); err != nil {
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

// read counts c's messages and reading events and their latency until the
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
		c.frames++
		forEachReading(buf.Bytes(), func(ev []byte) {
			c.readings++
			f.measure(c, ev, now)
		})
	}
}

// forEachReading calls fn with the text from each reading event of msg on
// (past its type). A message is one reading or a batch of them: each
// reading event starts with readingPrefix (the stream encodes "type"
// first), and no other text of a reading-only stream contains it.
func forEachReading(msg []byte, fn func(ev []byte)) {
	for {
		i := bytes.Index(msg, readingPrefix)
		if i < 0 {
			return
		}
		msg = msg[i+len(readingPrefix):]
		fn(msg)
	}
}

// measure records the latency of the reading whose text follows ev.
func (f *wsFleet) measure(c *wsClient, ev []byte, now time.Time) {
	id, ts, ok := parseReadingMsg(ev)
	if !ok {
		c.unmatched++
		return
	}
	st := f.devices[id]
	if st == nil {
		c.unmatched++
		return
	}
	at, ok := st.lookup(ts)
	if !ok {
		c.unmatched++
		return
	}
	c.hist.add(now.Sub(time.Unix(0, at)))
}

// parseReadingMsg finds the device id and the reading's ts (ms) at the
// start of a stream reading event without decoding all of it.
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

// share is how many reading events the clients would get, without
// coalescing, per stored reading: the bench spreads readings evenly over
// the devices, and each client gets those of the devices it watches.
func (f *wsFleet) share() float64 {
	if f.nDevs == 0 {
		return 0
	}
	var n float64
	for _, c := range f.clients {
		n += float64(c.watched) / float64(f.nDevs)
	}
	return n
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
		r.Frames += c.frames
		r.Matched += c.readings - c.unmatched
		if c.closeCode != 0 {
			r.ClosedByServer++
			if r.CloseCodes == nil {
				r.CloseCodes = map[string]int{}
			}
			r.CloseCodes[fmt.Sprint(c.closeCode)]++
		}
	}
	r.share = f.share()
	r.Expected = int64(math.Round(float64(stored) * r.share))
	r.P50Ms, r.P99Ms, r.P999Ms = h.quantile(0.5), h.quantile(0.99), h.quantile(0.999)
	r.MaxMs = ms(h.max.Seconds())
	if h.total() == 0 {
		r.MaxMs = -1
	}
	return r
}
