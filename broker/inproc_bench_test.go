package broker

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/ingest"
	"github.com/infrawatch/infrawatch/telemetry"
)

type benchAuth struct{}

func (benchAuth) AuthenticateDevice(id, secret string) (bool, error) {
	return secret == "s-"+id, nil
}
func (benchAuth) AuthenticateToken(string) (role string, ok bool) { return "", false }

type benchPublisher struct{ b *Broker }

func (p benchPublisher) Publish(topic string, payload []byte) error {
	return p.b.Server().Publish(topic, payload, false, 1)
}

type countWriter struct{ points atomic.Int64 }

func (w *countWriter) WriteLines(_ context.Context, _ []byte, points int) error {
	w.points.Add(int64(points))
	return nil
}

const benchDevices = 100

// loadEnv asks the test binary, run as a child of BenchmarkBrokerToIngest,
// to be the devices: "addr,messages,rate,readings per message" (rate in
// messages/s; 0: as fast as acks allow).
const loadEnv = "IW_BROKER_BENCH_LOAD"

// BenchmarkBrokerToIngest measures the embedded path per message, wired as
// serve wires it (cmd/infrawatch/inproc.go): 100 devices on their own TCP
// connections send one-reading QoS 1 PUBLISHes, one packet per write as a
// real device does; the broker hands them to ingest in process (ACL,
// intercept, decode, checks, rate limiter, encode, batch), an instant
// writer stores them, and the broker writes the PUBACKs. An op ends when
// its PUBACK has reached the device.
//
// The devices run in a child process, so cpu-ns/op is the broker and
// ingest alone (getrusage of this process), and it hardly depends on what
// else the shared machine runs, unlike ns/op. "paced" offers 10,000
// messages/s (100 per device per second, as `infrawatch bench --rate
// 10000` does): each message then arrives on its own, and the broker pays
// a read and a wake-up per message; use -benchtime 100000x (10 s).
// "burst" publishes as fast as a window of 500 unacknowledged messages per
// device allows, so the broker reads several messages at once.
// "paced-10per" offers the same 10,000 readings/s as 1,000 messages of 10
// readings each: what the per-message costs come to per reading when
// devices (or gateways) send several readings at once.
//
// An op is one reading, and one message but in "paced-10per".
func BenchmarkBrokerToIngest(b *testing.B) {
	b.Run("paced", func(b *testing.B) { runBrokerToIngest(b, 10000, 1) })
	b.Run("burst", func(b *testing.B) { runBrokerToIngest(b, 0, 1) })
	b.Run("paced-10per", func(b *testing.B) { runBrokerToIngest(b, 1000, 10) })
}

func runBrokerToIngest(b *testing.B, rate, perMsg int) {
	brk, err := New(Options{
		Listen: "127.0.0.1:0", Auth: benchAuth{}, ServicePassword: "svc-secret",
		Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(),
	})
	require.NoError(b, err)
	defer brk.Close()
	reg := make(map[string]*telemetry.Device, benchDevices)
	for i := range benchDevices {
		id := benchID(i)
		// The limiter runs but, at 10× a microsecond interval, lets
		// everything through.
		reg[id] = &telemetry.Device{ID: id, Slot: uint32(len(reg)), Profile: &telemetry.Profile{Type: "traffic_counter", Domain: "roads", Site: "a12", Lifecycle: telemetry.LifecycleActive, Interval: time.Microsecond}}
	}
	w := &countWriter{}
	in, err := ingest.New(ingest.Options{
		Local:      benchPublisher{brk},
		Lookup:     func(id string) (*telemetry.Device, bool) { d, ok := reg[id]; return d, ok },
		Writer:     w,
		BatchSize:  1000,
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(b, err)
	for _, f := range []string{ingest.TopicDeviceTelemetry, ingest.TopicGatewayTelemetry} {
		require.NoError(b, brk.Intercept(f, in.Deliver))
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- in.Run(ctx) }()
	require.NoError(b, brk.Start(ctx))

	cmd := exec.Command(os.Args[0], "-test.run=^TestBrokerBenchLoad$", "-test.count=1")
	msgs := (b.N + perMsg - 1) / perMsg
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d,%d", loadEnv, brk.Addr(), msgs, rate, perMsg))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(b, err)
	require.NoError(b, cmd.Start())
	// The child prints "connected" once every device has its CONNACK.
	out := bufio.NewScanner(stdout)
	for out.Scan() && out.Text() != "connected" {
	}
	b.ReportAllocs()
	cpu0, sw0 := processCPU(b)
	io0 := processIO(b)
	writes0 := brk.intercept.acks.writes.Load()
	b.ResetTimer()
	// "done": every message is acknowledged. The figures are taken before
	// the child is waited for, as /proc/self/io adds a reaped child's.
	for out.Scan() && out.Text() != "done" {
	}
	b.StopTimer()
	cpu1, sw1 := processCPU(b)
	io1 := processIO(b)
	for out.Scan() {
	}
	require.NoError(b, cmd.Wait(), "load process")
	// CPU time, unlike ns/op, hardly depends on what else the shared
	// machine runs.
	b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(sw1-sw0)/float64(b.N), "sleeps/op")
	// System calls cost several microseconds each on the VMs this runs
	// on; their count per message is a steadier figure than CPU time.
	b.ReportMetric(float64(io1.reads-io0.reads)/float64(b.N), "reads/op")
	b.ReportMetric(float64(io1.writes-io0.writes)/float64(b.N), "writes/op")
	b.ReportMetric(float64(brk.intercept.acks.writes.Load()-writes0)/float64(b.N), "ackwrites/op")
	cancel()
	require.NoError(b, <-runDone)
	require.Equal(b, int64(msgs*perMsg), w.points.Load(), "points stored")
}

// TestBrokerBenchLoad is BenchmarkBrokerToIngest's devices, in a child
// process; run directly it does nothing.
func TestBrokerBenchLoad(t *testing.T) {
	spec := os.Getenv(loadEnv)
	if spec == "" {
		t.Skip("the load of BenchmarkBrokerToIngest, run in its child process")
	}
	parts := strings.Split(spec, ",")
	require.Len(t, parts, 4)
	n, err := strconv.Atoi(parts[1])
	require.NoError(t, err)
	rate, err := strconv.Atoi(parts[2])
	require.NoError(t, err)
	perMsg, err := strconv.Atoi(parts[3])
	require.NoError(t, err)
	conns := make([]net.Conn, benchDevices)
	for i := range conns {
		conns[i] = benchConnect(t, parts[0], benchID(i))
	}
	fmt.Println("connected")
	now := time.Now().UnixMilli()
	var payload []byte
	for i := range perMsg {
		if i > 0 {
			payload = append(payload, ',')
		}
		payload = fmt.Appendf(payload, `{"ts":%d,"values":{"flow_vph":1260,"speed_kmh":54.5,"occupancy_pct":12.25}}`, now-int64(perMsg-i)*10)
	}
	if perMsg > 1 {
		payload = append(append([]byte{'['}, payload...), ']')
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		msgs := n / benchDevices
		if i < n%benchDevices {
			msgs++
		}
		var every time.Duration
		if rate > 0 {
			every = time.Duration(float64(time.Second) * benchDevices / float64(rate))
		}
		wg.Go(func() { benchDevice(t, c, benchID(i), payload, msgs, every) })
	}
	wg.Wait()
	fmt.Println("done")
	for _, c := range conns {
		c.Close()
	}
}

func benchID(i int) string { return fmt.Sprintf("tc-%04d", i) }

// benchDevice publishes msgs messages, one every every (or as fast as a
// window of unacknowledged ones allows), and returns once all are
// acknowledged.
func benchDevice(t *testing.T, c net.Conn, id string, payload []byte, msgs int, every time.Duration) {
	const window = 500
	topic := "devices/" + id + "/telemetry"
	credit := make(chan struct{}, window)
	go func() {
		// PUBACKs are 4 bytes each; anything else ends the reader.
		r := bufio.NewReader(c)
		var buf [4]byte
		for {
			if _, err := io.ReadFull(r, buf[:]); err != nil || buf[0] != 0x40 {
				return
			}
			<-credit
		}
	}()
	pk := make([]byte, 0, 256)
	var pid uint16
	start := time.Now()
	for i := range msgs {
		if every > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
		}
		credit <- struct{}{}
		pid++
		if pid == 0 {
			pid = 1
		}
		pk = append(pk[:0], 0x32) // PUBLISH, QoS 1
		pk = binary.AppendUvarint(pk, uint64(2+len(topic)+2+len(payload)))
		pk = binary.BigEndian.AppendUint16(pk, uint16(len(topic)))
		pk = append(pk, topic...)
		pk = binary.BigEndian.AppendUint16(pk, pid)
		pk = append(pk, payload...)
		if _, err := c.Write(pk); err != nil {
			t.Errorf("%s: publish: %v", id, err)
			return
		}
	}
	// Every message is acknowledged once the window can be filled.
	for range window {
		credit <- struct{}{}
	}
}

// processCPU returns the user and system CPU time this process used, and
// how often its threads went to sleep (voluntary context switches: each
// is a wake-up to pay for later).
func processCPU(b *testing.B) (time.Duration, int64) {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Nvcsw
}

type ioCounts struct{ reads, writes int64 }

// processIO returns how many read and write system calls this process made
// (/proc/self/io: syscr, syscw).
func processIO(b *testing.B) ioCounts {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skipf("no system call counts: %v", err)
	}
	var c ioCounts
	for line := range strings.Lines(string(raw)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "syscr":
			c.reads = n
		case "syscw":
			c.writes = n
		}
	}
	return c
}

// benchConnect opens an MQTT 3.1.1 connection for device id.
func benchConnect(t *testing.T, addr, id string) net.Conn {
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	str := func(p []byte, s string) []byte {
		return append(binary.BigEndian.AppendUint16(p, uint16(len(s))), s...)
	}
	var v []byte
	v = str(v, "MQTT")
	v = append(v, 4, 0xC2) // level 4; username, password, clean session
	v = binary.BigEndian.AppendUint16(v, 60)
	v = str(v, id)
	v = str(v, id)
	v = str(v, "s-"+id)
	_, err = c.Write(append(binary.AppendUvarint([]byte{0x10}, uint64(len(v))), v...))
	require.NoError(t, err)
	var ack [4]byte
	_, err = io.ReadFull(c, ack[:])
	require.NoError(t, err)
	require.Equal(t, [4]byte{0x20, 2, 0, 0}, ack, "CONNACK of %s", id)
	return c
}
