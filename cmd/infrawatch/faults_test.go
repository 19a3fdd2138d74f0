package main

// Fault-injection tests of the durability promises (README "Guarantees"):
// real serve, real influxd and Mosquitto on loopback, and a fault actually
// injected: InfluxDB stopped or behind a faulty proxy, serve killed with
// SIGKILL, the broker restarted or frozen, poison payloads and a flood.
// Every test ends by checking the message accounting.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// influxOutage is how long InfluxDB is down in TestFaultInfluxOutage (the
// issue's 60 s).
const influxOutage = 60 * time.Second

// startSystemWith is startSystem with a given influxd, and serve pointed at
// influxURL (a proxy in front of it, or its own URL).
func startSystemWith(t *testing.T, influx *testenv.InfluxServer, influxURL string, extraEnv ...string) *testSystem {
	t.Helper()
	ts := &testSystem{t: t, influx: influx, db: testenv.NewDB(t)}
	ts.env = append([]string{
		"INFRAWATCH_HTTP_LISTEN=127.0.0.1:0",
		fmt.Sprintf("INFRAWATCH_BROKER_LISTEN=127.0.0.1:%d", testenv.MustFreePort(t)),
		"INFRAWATCH_INFLUX_URL=" + influxURL,
		"INFRAWATCH_INFLUX_BUCKET=" + ts.db,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(t.TempDir(), "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(t.TempDir(), "spool"),
		"INFRAWATCH_AUTH_ADMIN_TOKEN=" + testAdminToken,
		"INFRAWATCH_LOG_LEVEL=warn",
	}, extraEnv...)
	ts.start()
	return ts
}

// stream is a fleet publishing distinct readings at QoS 1 until stopped.
// Reading k of device d has ts = base + k ms and flow_vph = k. A message
// counts as sent only once its PUBACK came; a publish that fails or times
// out is sent again (the same points), so every reading is eventually
// acknowledged.
type stream struct {
	t        *testing.T
	base     time.Time
	perMsg   int
	interval time.Duration
	sent     sync.Map // device id → *atomic.Int64 readings acknowledged
	stop     chan struct{}
	wg       sync.WaitGroup
}

// startStream has each device (id → password; "" for anonymous) publish
// perMsg readings every interval.
func startStream(t *testing.T, broker string, devices map[string]string, perMsg int, interval time.Duration) *stream {
	t.Helper()
	s := &stream{t: t, base: time.Now().Add(-10 * time.Minute).Truncate(time.Second), perMsg: perMsg, interval: interval, stop: make(chan struct{})}
	for id, secret := range devices {
		user := id
		if secret == "" {
			user = ""
		}
		o := paho.NewClientOptions().AddBroker(broker).SetClientID("pub-" + id).SetUsername(user).SetPassword(secret).
			SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(200 * time.Millisecond).
			SetMaxReconnectInterval(time.Second).SetConnectTimeout(2 * time.Second).SetCleanSession(true).
			SetWriteTimeout(2 * time.Second)
		c := paho.NewClient(o)
		tok := c.Connect()
		require.True(t, tok.WaitTimeout(10*time.Second), "device %s connects", id)
		require.NoError(t, tok.Error())
		n := new(atomic.Int64)
		s.sent.Store(id, n)
		s.wg.Go(func() {
			defer c.Disconnect(100)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for k := 0; ; k += perMsg {
				select {
				case <-s.stop:
					return
				case <-tick.C:
				}
				var rs []string
				for j := k; j < k+perMsg; j++ {
					rs = append(rs, fmt.Sprintf(`{"ts":%d,"values":{"flow_vph":%d}}`, s.base.Add(time.Duration(j)*time.Millisecond).UnixMilli(), j))
				}
				payload := "[" + strings.Join(rs, ",") + "]"
				for {
					tok := c.Publish("devices/"+id+"/telemetry", 1, false, payload)
					if tok.WaitTimeout(3*time.Second) && tok.Error() == nil {
						break
					}
					select {
					case <-s.stop:
						return // never acknowledged: not counted
					case <-time.After(200 * time.Millisecond):
					}
				}
				n.Add(int64(perMsg))
			}
		})
	}
	return s
}

// end stops publishing and returns the acknowledged readings per device.
func (s *stream) end() map[string]int64 {
	close(s.stop)
	s.wg.Wait()
	out := map[string]int64{}
	s.sent.Range(func(k, v any) bool { out[k.(string)] = v.(*atomic.Int64).Load(); return true })
	return out
}

func (s *stream) total() (n int64) {
	s.sent.Range(func(_, v any) bool { n += v.(*atomic.Int64).Load(); return true })
	return n
}

// requireAllStored waits until every acknowledged reading of every device
// is in InfluxDB: the counts match exactly (a reading sent twice is the
// same point, so more would be a bug too).
func requireAllStored(t *testing.T, ts *testSystem, sent map[string]int64, within time.Duration) {
	t.Helper()
	for id, n := range sent {
		q := fmt.Sprintf(`SELECT count(flow_vph) FROM traffic_counter WHERE device_id='%s'`, id)
		ok := false
		deadline := time.Now().Add(within)
		var got float64
		for time.Now().Before(deadline) {
			if got = ts.influxQL(q); got == float64(n) {
				ok = true
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !ok {
			t.Logf("device %s: missing flow_vph values %v", id, missing(t, ts, id, n))
		}
		require.True(t, ok, "device %s: %v of %d acknowledged readings stored", id, got, n)
	}
}

// requireAccounting checks, at quiescence, that every message that reached
// ingest ended in exactly one of stored, rejected, dropped:
// received + recovered = stored + rejected + dropped, pending = spooled = 0.
func requireAccounting(t *testing.T, api string) map[string]float64 {
	t.Helper()
	var m map[string]float64
	sum := func(prefix string) (s float64) {
		for k, v := range m {
			if k == prefix || strings.HasPrefix(k, prefix+"{") {
				s += v
			}
		}
		return s
	}
	var ok bool
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		m = scrape(t, api)
		if sum("infrawatch_ingest_messages_pending") == 0 && sum("infrawatch_ingest_messages_spooled") == 0 &&
			sum("infrawatch_ingest_messages_received_total")+sum("infrawatch_ingest_messages_recovered_total") ==
				sum("infrawatch_ingest_messages_stored_total")+sum("infrawatch_ingest_messages_rejected_total")+sum("infrawatch_ingest_messages_dropped_total") {
			ok = true
			break
		}
	}
	require.True(t, ok, "accounting: received %v + recovered %v != stored %v + rejected %v + dropped %v (pending %v, spooled %v)",
		sum("infrawatch_ingest_messages_received_total"), sum("infrawatch_ingest_messages_recovered_total"),
		sum("infrawatch_ingest_messages_stored_total"), sum("infrawatch_ingest_messages_rejected_total"),
		sum("infrawatch_ingest_messages_dropped_total"), sum("infrawatch_ingest_messages_pending"), sum("infrawatch_ingest_messages_spooled"))
	return m
}

func fleet(ts *testSystem, prefix string, n int) map[string]string {
	out := map[string]string{}
	for i := range n {
		id := fmt.Sprintf("%s-%02d", prefix, i)
		out[id] = ts.createDevice(id, "traffic_counter", "s1", "")
	}
	return out
}

// TestFaultInfluxOutage: InfluxDB is stopped for influxOutage under 2,000
// readings/s. Messages are acknowledged from the spool meanwhile; when it
// is back, the spool is replayed while live data flows, and every
// acknowledged reading is stored.
func TestFaultInfluxOutage(t *testing.T) {
	t.Parallel()
	influx := testenv.OwnInflux(t)
	ts := startSystemWith(t, influx, influx.URL,
		"INFRAWATCH_INFLUX_TIMEOUT=2s", "INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000", "INFRAWATCH_INGEST_DEVICE_BURST=1000")
	// 20 devices × 10 messages/s × 10 readings = 2,000 readings/s.
	s := startStream(t, ts.mqtt, fleet(ts, "tc", 20), 10, 100*time.Millisecond)
	time.Sleep(3 * time.Second)
	influx.Stop()
	stoppedAt := s.total()
	time.Sleep(influxOutage)
	during := s.total() - stoppedAt
	m := scrape(t, ts.api)
	require.Zero(t, m["infrawatch_ingest_influx_up"], "ingest knows InfluxDB is down")
	require.Positive(t, m["infrawatch_ingest_messages_spooled"], "acknowledged from the spool")
	t.Logf("outage: %d readings acknowledged while InfluxDB was down; spool %v bytes", during, m["infrawatch_ingest_spool_bytes"])
	require.Greater(t, during, int64(influxOutage.Seconds()*1500), "the fleet kept publishing at about 2,000 readings/s")
	require.NoError(t, influx.Start(context.Background()))
	time.Sleep(3 * time.Second) // live data flows during the replay
	sent := s.end()
	requireAllStored(t, ts, sent, 60*time.Second)
	m = requireAccounting(t, ts.api)
	require.Equal(t, 1.0, m["infrawatch_ingest_influx_up"])
	require.Zero(t, m["infrawatch_ingest_spool_bytes"])
}

// faultProxy is a TCP proxy whose behaviour can be switched: pass, refuse
// (connections reset), blackhole (accepted, never answered) or latency.
type faultProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	mode    string
	latency time.Duration
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &faultProxy{ln: ln, target: target, mode: "pass", conns: map[net.Conn]bool{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.set("pass", 0) // closes the open connections
		p.wg.Wait()
	})
	return p
}

func (p *faultProxy) URL() string { return "http://" + p.ln.Addr().String() }

// set switches the mode and drops open connections, so that kept-alive
// connections meet the new fault too.
func (p *faultProxy) set(mode string, latency time.Duration) {
	p.mu.Lock()
	p.mode, p.latency = mode, latency
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

func (p *faultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns[c] = true
	return true
}

func (p *faultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode, lat := p.mode, p.latency
		p.mu.Unlock()
		switch mode {
		case "refuse":
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // RST
			}
			c.Close()
			continue
		case "blackhole":
			p.track(c)
			p.wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(c)
		p.track(up)
		pipe := func(dst, src net.Conn, delay time.Duration) {
			defer dst.Close()
			defer src.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					time.Sleep(delay)
					if _, werr := dst.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}
		p.wg.Go(func() { pipe(up, c, lat) })
		p.wg.Go(func() { pipe(c, up, 0) })
	}
}

// TestFaultInfluxProxy puts a faulty proxy between ingest and influxd:
// latency, refused connections, then a blackhole (requests that never get
// an answer). Nothing acknowledged is lost.
func TestFaultInfluxProxy(t *testing.T) {
	influx := testenv.Influx(t)
	proxy := newFaultProxy(t, strings.TrimPrefix(influx.URL, "http://"))
	ts := startSystemWith(t, influx, proxy.URL(), "INFRAWATCH_INFLUX_TIMEOUT=1s",
		"INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000", "INFRAWATCH_INGEST_DEVICE_BURST=1000")
	s := startStream(t, ts.mqtt, fleet(ts, "tc", 5), 5, 50*time.Millisecond)
	for _, f := range []struct {
		mode    string
		latency time.Duration
	}{{"latency", 300 * time.Millisecond}, {"refuse", 0}, {"blackhole", 0}, {"pass", 0}} {
		proxy.set(f.mode, f.latency)
		time.Sleep(3 * time.Second)
		m := scrape(t, ts.api)
		t.Logf("%s: spooled %v, retries %v", f.mode, m["infrawatch_ingest_messages_spooled"], m["infrawatch_ingest_write_retries_total"])
	}
	sent := s.end()
	requireAllStored(t, ts, sent, 30*time.Second)
	m := requireAccounting(t, ts.api)
	require.Positive(t, m["infrawatch_ingest_write_retries_total"], "the faults were met")
}

// serveProcess is `infrawatch serve` as a child process, to be killed.
type serveProcess struct {
	t    *testing.T
	bin  string
	env  []string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

func buildInfrawatch(t *testing.T) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "infrawatch")
	out, err := exec.Command("go", "build", "-o", bin, filepath.Join(root, "cmd", "infrawatch")).CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

func (p *serveProcess) start(api string) {
	t := p.t
	t.Helper()
	cmd := exec.Command(p.bin, "serve")
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	require.Eventually(t, func() bool {
		resp, err := http.Get(api + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 30*time.Second, 50*time.Millisecond, "serve ready")
}

func (p *serveProcess) kill(sig syscall.Signal) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

// TestFaultServeKill9: serve is killed with SIGKILL in the middle of a
// stream through an external Mosquitto, then started again. Every reading
// a device got a PUBACK for is stored, once.
func TestFaultServeKill9(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	kill9UnderStream(t, buildInfrawatch(t), mq.URL, "INFRAWATCH_MQTT_BROKER_URL="+mq.URL)
}

// TestFaultServeKill9Embedded: with the embedded broker, ingest is in the
// same process as the broker, so nobody else holds a message for it. The
// broker sends a device's PUBACK only once ingest has stored or spooled the
// reading. serve is killed with SIGKILL mid-stream (2,500 readings/s) and
// restarted on the same port: every reading a device got a PUBACK for is
// in InfluxDB, exactly once per point; what was not acknowledged the
// devices publish again.
func TestFaultServeKill9Embedded(t *testing.T) {
	bin := os.Getenv("IW_KILL9_BIN") // an older build, to show it loses readings
	if bin == "" {
		bin = buildInfrawatch(t)
	}
	kill9UnderStream(t, bin, "")
}

// kill9UnderStream starts bin's serve as a child process (extraEnv picks
// the broker), streams 2,500 readings/s at QoS 1 from 10 devices through
// broker (their own broker URL; "" for serve's embedded one), kills serve
// with SIGKILL mid-stream, restarts it, and requires InfluxDB to hold
// exactly the acknowledged readings and the accounting to balance.
func kill9UnderStream(t *testing.T, bin, broker string, extraEnv ...string) {
	influx := testenv.Influx(t)
	dir := t.TempDir()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.MustFreePort(t))
	ts := &testSystem{t: t, influx: influx, db: testenv.NewDB(t), api: "http://" + httpAddr}
	external := broker != ""
	if !external {
		mqttAddr := fmt.Sprintf("127.0.0.1:%d", testenv.MustFreePort(t))
		broker = "tcp://" + mqttAddr
		extraEnv = append(extraEnv, "INFRAWATCH_BROKER_LISTEN="+mqttAddr)
	}
	logf, err := os.Create(filepath.Join(dir, "serve.log"))
	require.NoError(t, err)
	p := &serveProcess{t: t, bin: bin, log: logf, env: append([]string{
		"INFRAWATCH_HTTP_LISTEN=" + httpAddr,
		"INFRAWATCH_INFLUX_URL=" + influx.URL,
		"INFRAWATCH_INFLUX_BUCKET=" + ts.db,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(dir, "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(dir, "spool"),
		"INFRAWATCH_AUTH_ADMIN_TOKEN=" + testAdminToken,
		"INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000", "INFRAWATCH_INGEST_DEVICE_BURST=1000",
		"INFRAWATCH_LOG_LEVEL=warn",
	}, extraEnv...)}
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("serve log:\n%s", b)
		}
	})
	p.start(ts.api)
	devices := fleet(ts, "tc", 10)
	if external {
		for id := range devices {
			devices[id] = "" // anonymous on the test Mosquitto
		}
	}
	s := startStream(t, broker, devices, 5, 20*time.Millisecond) // 2,500 readings/s
	time.Sleep(2 * time.Second)
	before := s.total()
	p.kill(syscall.SIGKILL)
	killedAt := s.total()
	require.Positive(t, before, "readings were acknowledged before the kill")
	time.Sleep(time.Second) // the devices get no answer, or the broker holds the stream
	p.start(ts.api)
	time.Sleep(3 * time.Second)
	sent := s.end()
	require.Greater(t, s.total(), killedAt, "the devices reconnected and the stream went on")
	requireAllStored(t, ts, sent, 30*time.Second)
	requireAccounting(t, ts.api)
}

// TestFaultBrokerRestart: the external broker is stopped and started again
// (SIGTERM: Mosquitto saves its sessions). Ingest reconnects, the broker has
// kept its session and queued what devices published meanwhile; nothing
// acknowledged at QoS 1 is lost; the metrics show the reconnect.
func TestFaultBrokerRestart(t *testing.T) {
	brokerFault(t, func(mq *testenv.MosquittoServer) {
		mq.Stop()
		time.Sleep(2 * time.Second)
		require.NoError(t, mq.Start())
	}, 0)
}

// TestFaultBrokerPause freezes Mosquitto (SIGSTOP) past ingest's keepalive,
// so ingest gives the connection up and takes its session over on a new
// one while the broker holds the devices' buffered publishes.
func TestFaultBrokerPause(t *testing.T) {
	brokerFault(t, func(mq *testenv.MosquittoServer) {
		require.NoError(t, mq.Pause())
		// Past the 2 s keepalive and the 2 s ping timeout after it: ingest
		// gives the connection up.
		time.Sleep(6 * time.Second)
		require.NoError(t, mq.Resume())
	}, 0)
}

// TestFaultBrokerRestartWithoutPersistence: a broker that forgets sessions
// when it restarts routes what devices publish before ingest subscribes
// again to nobody, and acknowledges it. Ingest cannot prevent that; it
// must say so: the session-lost counter and an error log.
func TestFaultBrokerRestartWithoutPersistence(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{Extra: "persistence false"})
	ts := startSystem(t, "INFRAWATCH_MQTT_BROKER_URL="+mq.URL, "INFRAWATCH_MQTT_KEEPALIVE=2s")
	require.Eventually(t, func() bool { return scrape(t, ts.api)["infrawatch_ingest_mqtt_connected"] == 1 },
		30*time.Second, 100*time.Millisecond, "ingest connected")
	require.Zero(t, scrape(t, ts.api)["infrawatch_ingest_mqtt_sessions_lost_total"], "a first session is new, not lost")
	mq.Stop()
	require.NoError(t, mq.Start())
	require.Eventually(t, func() bool {
		m := scrape(t, ts.api)
		return m["infrawatch_ingest_mqtt_connected"] == 1 && m["infrawatch_ingest_mqtt_sessions_lost_total"] == 1
	}, 30*time.Second, 100*time.Millisecond, "ingest reconnected and counted the lost session")
}

// brokerFault streams QoS 1 readings from 5 devices through Mosquitto,
// applies the fault, waits for ingest to reconnect, and requires every
// acknowledged reading stored, the accounting balanced, and lost sessions
// counted.
func brokerFault(t *testing.T, fault func(mq *testenv.MosquittoServer), sessionsLost float64) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	ts := startSystem(t, "INFRAWATCH_MQTT_BROKER_URL="+mq.URL, "INFRAWATCH_MQTT_KEEPALIVE=2s",
		"INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000", "INFRAWATCH_INGEST_DEVICE_BURST=1000")
	devices := map[string]string{}
	for id := range fleet(ts, "tc", 5) {
		devices[id] = ""
	}
	s := startStream(t, mq.URL, devices, 5, 50*time.Millisecond)
	time.Sleep(2 * time.Second)
	fault(mq)
	require.Eventually(t, func() bool { return scrape(t, ts.api)["infrawatch_ingest_mqtt_connected"] == 1 },
		30*time.Second, 100*time.Millisecond, "ingest reconnected")
	time.Sleep(2 * time.Second)
	sent := s.end()
	requireAllStored(t, ts, sent, 30*time.Second)
	m := requireAccounting(t, ts.api)
	require.GreaterOrEqual(t, m["infrawatch_ingest_reconnects_total"], 1.0)
	require.Equal(t, sessionsLost, m["infrawatch_ingest_mqtt_sessions_lost_total"])
}

// TestFaultPoisonAndFlood: oversized, deeply nested and invalid UTF-8
// payloads are rejected at bounded cost; an unknown device's messages are
// kept and replayed once it is registered; one device flooding far above
// its rate is rate_limited while the others' readings are all stored
// without delay.
func TestFaultPoisonAndFlood(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	ts := startSystem(t, "INFRAWATCH_MQTT_BROKER_URL="+mq.URL, "INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=5", "INFRAWATCH_INGEST_DEVICE_BURST=10")
	ts.createDevice("flooder", "traffic_counter", "s1", "")
	normals := map[string]string{}
	for id := range fleet(ts, "tc", 5) {
		normals[id] = ""
	}
	c, err := connect(t, mq.URL, "poison", "", "")
	require.NoError(t, err)
	pub := func(topic string, payload []byte) {
		tok := c.Publish(topic, 1, false, payload)
		require.True(t, tok.WaitTimeout(30*time.Second))
		require.NoError(t, tok.Error())
	}

	// Poison.
	heap := testenv.HeapAfterGC() // serve runs in this process
	pub("devices/flooder/telemetry", []byte(strings.Repeat("x", 10<<20)))
	pub("devices/flooder/telemetry", []byte(strings.Repeat("[", 60000)))
	pub("devices/flooder/telemetry", []byte("{\"values\":{\"flow\xff\xfe\":1}}"))
	// An unknown device, registered later.
	now := time.Now().UnixMilli()
	for i := range 3 {
		pub("devices/late-1/telemetry", fmt.Appendf(nil, `{"ts":%d,"values":{"flow_vph":%d}}`, now-int64(i)*1000, i))
	}
	var list struct {
		DeadLetters []struct {
			ID               uint64 `json:"id"`
			Reason           string `json:"reason"`
			DeviceID         string `json:"device_id"`
			Payload          string `json:"payload"`
			PayloadTruncated bool   `json:"payload_truncated"`
		} `json:"deadletters"`
	}
	require.Eventually(t, func() bool {
		ts.do("GET", "/api/v1/deadletters", testAdminToken, nil, &list)
		return len(list.DeadLetters) == 6
	}, 10*time.Second, 50*time.Millisecond)
	reasons := map[string]int{}
	for _, d := range list.DeadLetters {
		reasons[d.Reason]++
		require.LessOrEqual(t, len(d.Payload), 64<<10, "a dead letter keeps at most max_payload_bytes")
	}
	require.Equal(t, map[string]int{"too_large": 1, "malformed_json": 2, "unknown_device": 3}, reasons)
	// Less than the payload: a dead letter or buffer that kept it (or any
	// 10 MB copy) alive fails; the growth measured is about 0.3 MiB.
	grown := int64(testenv.HeapAfterGC()) - int64(heap)
	t.Logf("live heap grew %.2f MiB after the poison", float64(grown)/(1<<20))
	require.Less(t, grown, int64(5<<20), "bounded memory after a 10 MB payload")
	require.Equal(t, 401, ts.do("GET", "/api/v1/deadletters", "", nil, nil), "admin only")

	ts.createDevice("late-1", "traffic_counter", "s1", "")
	var res struct {
		Replayed int `json:"replayed"`
	}
	require.Equal(t, 200, ts.do("POST", "/api/v1/deadletters/replay", testAdminToken, map[string]any{"reason": "unknown_device"}, &res))
	require.Equal(t, 3, res.Replayed)
	require.Eventually(t, func() bool {
		return ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter WHERE device_id='late-1'`) == 3
	}, 10*time.Second, 50*time.Millisecond, "replayed after registration")

	// Flood: one device at 200 messages/s, 200 times its expected rate
	// (the issue asks for 10×; the limit here is 5×), while five others
	// publish at their rate.
	floodStop := make(chan struct{})
	var flooded atomic.Int64
	fc, err := connect(t, mq.URL, "flooder", "", "")
	require.NoError(t, err)
	var fwg sync.WaitGroup
	fwg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for k := 0; ; k++ {
			select {
			case <-floodStop:
				return
			case <-tick.C:
			}
			fc.Publish("devices/flooder/telemetry", 1, false, fmt.Sprintf(`{"values":{"flow_vph":%d}}`, k)).WaitTimeout(time.Second)
			flooded.Add(1)
		}
	})
	s := startStream(t, mq.URL, normals, 1, 400*time.Millisecond) // 2.5/s: within 5× their 1/s
	time.Sleep(5 * time.Second)
	sent := s.end()
	// Still flooding: the normal devices' readings are all stored within
	// a second, however far behind the flooder is.
	start := time.Now()
	requireAllStored(t, ts, sent, time.Second)
	t.Logf("normal devices' last readings stored %v after their publish; flooder at %d messages so far", time.Since(start), flooded.Load())
	close(floodStop)
	fwg.Wait()
	m := requireAccounting(t, ts.api)
	t.Logf("flooder sent %d messages; %v rate_limited", flooded.Load(), m[`infrawatch_ingest_messages_rejected_total{reason="rate_limited"}`])
	require.Greater(t, m[`infrawatch_ingest_messages_rejected_total{reason="rate_limited"}`], float64(flooded.Load())/2)
	for id := range normals {
		require.Zero(t, ts.influxQL(`SELECT count(flow_vph) FROM traffic_counter WHERE device_id='`+id+`'`)-float64(sent[id]))
	}
}

// missing lists the readings k < n of device id that are not stored.
func missing(t *testing.T, ts *testSystem, id string, n int64) []int64 {
	have := influxValues(t, ts.influx.URL, ts.db, fmt.Sprintf(`SELECT flow_vph FROM traffic_counter WHERE device_id='%s'`, id))
	var miss []int64
	for k := range n {
		if !have[int(k)] {
			miss = append(miss, k)
		}
	}
	return miss
}
