package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// Mode is what a System runs between the devices and InfluxDB.
type Mode string

// The modes of a System.
const (
	// ModeEmbedded is `infrawatch serve` with its embedded broker.
	ModeEmbedded Mode = "embedded"
	// ModeMosquitto is `infrawatch serve` behind a private Mosquitto
	// (devices are still provisioned through the API: ingest accepts
	// only known devices).
	ModeMosquitto Mode = "mosquitto"
	// ModeTelegraf is Telegraf (mqtt_consumer → influxdb_v2) behind a
	// private Mosquitto: the reference infrawatch is compared with.
	ModeTelegraf Mode = "telegraf"
)

// Modes are all modes, in the order `bench --mode all` runs them.
var Modes = []Mode{ModeEmbedded, ModeMosquitto, ModeTelegraf}

// ParseMode reads a mode name.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("mode %q: want embedded, mosquitto or telegraf", s)
}

// SystemOptions configures StartSystem.
type SystemOptions struct {
	// Mode is what runs between the devices and InfluxDB; ModeEmbedded
	// when empty.
	Mode Mode
	// Telegraf is the telegraf executable (ModeTelegraf);
	// <repo>/.tools/bin/telegraf when empty.
	Telegraf string
	// Binary is the infrawatch executable to run as `serve`.
	Binary string
	// Dir holds the system's data and logs; a temporary folder, removed by
	// Close, when empty.
	Dir string
	// DB is the InfluxDB database infrawatch writes to; DefaultDB when empty.
	DB string
	// Env is added to the child's environment (INFRAWATCH_* overrides,
	// e.g. INFRAWATCH_INGEST_WORKERS=4); it wins over what StartSystem sets.
	Env []string
	// ReadyTimeout bounds the wait for /readyz; 60s when zero.
	ReadyTimeout time.Duration
}

// System is a private, complete infrawatch: an influxd and an `infrawatch
// serve` child process (a child, so that its CPU time is its own), on free
// loopback ports.
type System struct {
	Mode      Mode
	APIURL    string // empty in ModeTelegraf
	BrokerURL string
	InfluxURL string
	DB        string
	Token     string // admin token
	Dir       string
	// ServePID and InfluxPID are the processes to measure.
	ServePID     int
	InfluxPID    int
	MosquittoPID int
	TelegrafPID  int

	influx    *testenv.InfluxServer
	mosquitto *child
	telegraf  *child
	serve     *exec.Cmd
	done      chan struct{}
	logPath   string
	tempDir   bool
}

// StartSystem starts influxd, then (ModeMosquitto, ModeTelegraf) a
// Mosquitto, then `<Binary> serve` with its embedded broker or behind the
// Mosquitto, or Telegraf, and returns once the API answers /readyz (or a
// first reading went through Telegraf into InfluxDB). infrawatch's
// per-device rate limit is lifted (a bench device sends far faster than
// its expected interval). Close stops all of it.
func StartSystem(ctx context.Context, o SystemOptions) (s *System, err error) {
	if o.Mode == "" {
		o.Mode = ModeEmbedded
	}
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return nil, err
	}
	if o.Binary == "" && o.Mode != ModeTelegraf {
		return nil, errors.New("binary: empty")
	}
	if o.DB == "" {
		o.DB = DefaultDB
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	s = &System{Mode: o.Mode, DB: o.DB, Dir: o.Dir}
	if s.Dir == "" {
		if s.Dir, err = os.MkdirTemp("", "infrawatch-bench-"); err != nil {
			return nil, fmt.Errorf("create bench folder: %w", err)
		}
		s.tempDir = true
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	influxDir := filepath.Join(s.Dir, "influx")
	if s.influx, err = testenv.StartInflux(ctx, influxDir); err != nil {
		return s, fmt.Errorf("start influxd: %w", err)
	}
	s.InfluxURL = s.influx.URL
	s.InfluxPID = FindPID("influxd", filepath.Join(influxDir, "influxdb.conf"))

	if o.Mode != ModeEmbedded {
		if s.mosquitto, s.BrokerURL, err = startMosquitto(ctx, filepath.Join(s.Dir, "mosquitto")); err != nil {
			return s, fmt.Errorf("start mosquitto: %w", err)
		}
		s.MosquittoPID = s.mosquitto.pid()
	}
	if o.Mode == ModeTelegraf {
		if err := s.startTelegraf(ctx, o.Telegraf); err != nil {
			return s, err
		}
		return s, nil
	}

	httpPort, err := testenv.FreePort()
	if err != nil {
		return s, err
	}
	mqttPort, err := testenv.FreePort()
	if err != nil {
		return s, err
	}
	if s.Token, err = randomHex(16); err != nil {
		return s, err
	}
	s.APIURL = "http://127.0.0.1:" + strconv.Itoa(httpPort)
	if o.Mode == ModeEmbedded {
		s.BrokerURL = "tcp://127.0.0.1:" + strconv.Itoa(mqttPort)
	}

	env := []string{
		"INFRAWATCH_HTTP_LISTEN=127.0.0.1:" + strconv.Itoa(httpPort),
		"INFRAWATCH_BROKER_LISTEN=127.0.0.1:" + strconv.Itoa(mqttPort),
		"INFRAWATCH_INFLUX_URL=" + s.InfluxURL,
		"INFRAWATCH_INFLUX_BUCKET=" + s.DB,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(s.Dir, "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(s.Dir, "spool"),
		"INFRAWATCH_ADMIN_TOKEN=" + s.Token,
		"INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000000",
		"INFRAWATCH_INGEST_DEVICE_BURST=1000000",
		"INFRAWATCH_LOG_LEVEL=warn",
	}
	if o.Mode == ModeMosquitto {
		env = append(env, "INFRAWATCH_MQTT_BROKER_URL="+s.BrokerURL)
	}
	s.logPath = filepath.Join(s.Dir, "serve.log")
	logf, err := os.Create(s.logPath)
	if err != nil {
		return s, fmt.Errorf("create serve log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(o.Binary, "serve")
	cmd.Env = append(append(childEnv(os.Environ()), env...), o.Env...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group (a Ctrl-C reaches us, and we stop it in order);
	// Pdeathsig so it never outlives us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return s, fmt.Errorf("start %s serve: %w", o.Binary, err)
	}
	s.serve, s.done = cmd, make(chan struct{})
	s.ServePID = cmd.Process.Pid
	go func() { _ = cmd.Wait(); close(s.done) }()

	if err := s.waitReady(ctx, o.ReadyTimeout); err != nil {
		return s, fmt.Errorf("%w\n%s", err, s.LogTail(2000))
	}
	return s, nil
}

// childEnv drops the caller's INFRAWATCH_* settings, so the child runs on
// defaults plus what StartSystem sets (INFRAWATCH_INFLUXD only names a
// binary and stays).
func childEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if strings.HasPrefix(kv, "INFRAWATCH_") && !strings.HasPrefix(kv, "INFRAWATCH_INFLUXD=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (s *System) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.APIURL+"/readyz", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for infrawatch serve at %s to be ready: %w", s.APIURL, ctx.Err())
		case <-s.done:
			return errors.New("infrawatch serve exited during start-up")
		case <-tick.C:
		}
	}
}

// LogTail returns the last n bytes of the serve child's log (Telegraf's
// in ModeTelegraf).
func (s *System) LogTail(n int64) string {
	if s.telegraf != nil {
		return s.telegraf.logTail(n)
	}
	return tail(s.logPath, n)
}

func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, 0)
	}
	b := make([]byte, n)
	k, _ := f.Read(b)
	return string(b[:k])
}

// Procs is the map of processes for Options.Procs.
func (s *System) Procs() map[string]int {
	m := map[string]int{}
	for name, pid := range map[string]int{"infrawatch": s.ServePID, "influxd": s.InfluxPID,
		"mosquitto": s.MosquittoPID, "telegraf": s.TelegrafPID} {
		if pid > 0 {
			m[name] = pid
		}
	}
	return m
}

// Options returns run options aimed at this system.
func (s *System) Options() Options {
	o := Options{APIURL: s.APIURL, Token: s.Token, BrokerURL: s.BrokerURL,
		InfluxURL: s.InfluxURL, DB: s.DB, Procs: s.Procs()}
	if s.Mode == ModeTelegraf {
		o.Direct, o.CountField = true, TelegrafCountField
	}
	return o
}

// Close stops serve (SIGTERM, so ingest flushes; SIGKILL after 15s), then
// influxd, and removes a temporary folder.
func (s *System) Close() {
	if s.serve != nil {
		_ = s.serve.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = s.serve.Process.Kill()
			<-s.done
		}
		s.serve = nil
	}
	s.telegraf.stop()
	s.telegraf = nil
	s.mosquitto.stop()
	s.mosquitto = nil
	if s.influx != nil {
		s.influx.Stop()
		s.influx = nil
	}
	if s.tempDir {
		_ = os.RemoveAll(s.Dir)
	}
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return hex.EncodeToString(b), nil
}
