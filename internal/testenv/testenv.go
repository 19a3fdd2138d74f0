package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RepoRoot returns the directory holding go.mod, found by walking up from
// the working directory (go test runs in the package's directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("listen for a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// MustFreePort is FreePort for tests.
func MustFreePort(t testing.TB) int {
	t.Helper()
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// SkipIfShort skips integration tests under `go test -short`.
func SkipIfShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs real servers (run without -short)")
	}
}

// InfluxdPath finds the influxd binary: $INFRAWATCH_INFLUXD, then the
// project-local .tools/bin/influxd that the Makefile installs, then $PATH.
func InfluxdPath() (string, error) {
	if p := os.Getenv("INFRAWATCH_INFLUXD"); p != "" {
		return p, nil
	}
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, ".tools", "bin", "influxd")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("influxd")
	if err != nil {
		return "", errors.New("influxd not found: run `make influxd` (installs InfluxDB 1.8.3 into .tools/bin)")
	}
	return p, nil
}

// process is a child server that can be stopped, restarted, paused.
type process struct {
	mu   sync.Mutex
	name string
	args []string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.name)
	}
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Stdout = p.log
	cmd.Stderr = p.log
	// Own process group, so a test's kill never reaches `go test` itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// exited reports whether the started process has ended on its own.
func (p *process) exited() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func (p *process) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s not running", p.name)
	}
	return p.cmd.Process.Signal(sig)
}

// stop sends SIGTERM (or SIGKILL when kill is set) and waits for the exit.
func (p *process) stop(kill bool) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused server cannot handle SIGTERM
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func waitFor(ctx context.Context, what string, done <-chan struct{}, ok func() bool) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if ok() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-done:
			return fmt.Errorf("wait for %s: process exited", what)
		case <-tick.C:
		}
	}
}

// InfluxServer is a running influxd 1.8 with Flux enabled.
type InfluxServer struct {
	URL  string // http://127.0.0.1:port
	Port int
	Dir  string
	p    *process
}

// StartInflux starts influxd in dir (created when missing) on free loopback
// ports and waits until it answers /ping. Use it from TestMain; tests use
// Influx.
func StartInflux(ctx context.Context, dir string) (*InfluxServer, error) {
	bin, err := InfluxdPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create influx dir: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "influxd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open influx log: %w", err)
	}
	for attempt := 1; ; attempt++ {
		httpPort, err := FreePort()
		if err != nil {
			return nil, err
		}
		rpcPort, err := FreePort()
		if err != nil {
			return nil, err
		}
		conf := filepath.Join(dir, "influxdb.conf")
		if err := os.WriteFile(conf, []byte(InfluxConfig(dir, httpPort, rpcPort)), 0o644); err != nil {
			return nil, fmt.Errorf("write influx config: %w", err)
		}
		s := &InfluxServer{
			URL:  "http://127.0.0.1:" + strconv.Itoa(httpPort),
			Port: httpPort,
			Dir:  dir,
			p:    &process{name: "influxd", args: []string{bin, "run", "-config", conf}, log: logf},
		}
		err = s.Start(ctx)
		if err == nil {
			return s, nil
		}
		if !s.p.exited() || attempt == portAttempts {
			s.p.stop(true)
			return nil, err
		}
	}
}

// portAttempts is how often a server that exited at start-up is started
// again on other free ports: a port found free can be taken by another
// test process before the server binds it.
const portAttempts = 3

// InfluxConfig is the influxd 1.8 configuration used by tests and `make run`:
// loopback only, Flux on, no reporting, data under dir.
func InfluxConfig(dir string, httpPort, rpcPort int) string {
	return fmt.Sprintf(`reporting-disabled = true
bind-address = "127.0.0.1:%d"
[meta]
  dir = %q
[data]
  dir = %q
  wal-dir = %q
  query-log-enabled = false
  trace-logging-enabled = false
[coordinator]
  log-queries-after = "0s"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:%d"
  flux-enabled = true
  log-enabled = false
  auth-enabled = false
[logging]
  level = "warn"
[continuous_queries]
  log-enabled = false
`, rpcPort, filepath.Join(dir, "meta"), filepath.Join(dir, "data"), filepath.Join(dir, "wal"), httpPort)
}

// Start (re)starts a stopped server on the same port and data and waits
// until it is ready.
func (s *InfluxServer) Start(ctx context.Context) error {
	if err := s.p.start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	s.p.mu.Lock()
	done := s.p.done
	s.p.mu.Unlock()
	client := &http.Client{Timeout: time.Second}
	return waitFor(ctx, "influxd "+s.URL, done, func() bool {
		resp, err := client.Get(s.URL + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusNoContent
	})
}

// Stop stops the server gracefully; Start brings it back with its data.
func (s *InfluxServer) Stop() { s.p.stop(false) }

// Kill stops the server with SIGKILL.
func (s *InfluxServer) Kill() { s.p.stop(true) }

// Pause freezes the server (SIGSTOP): connections hang instead of failing.
func (s *InfluxServer) Pause() error { return s.p.signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (s *InfluxServer) Resume() error { return s.p.signal(syscall.SIGCONT) }

var dbSeq struct {
	mu sync.Mutex
	n  int
}

// NewDB returns a database name not used before in this process, so tests
// sharing one server do not see each other's points. The store creates it.
func NewDB(t testing.TB) string {
	dbSeq.mu.Lock()
	dbSeq.n++
	n := dbSeq.n
	dbSeq.mu.Unlock()
	return fmt.Sprintf("test_%d_%d", os.Getpid(), n)
}

var shared struct {
	once sync.Once
	srv  *InfluxServer
	dir  string
	err  error
}

// Influx returns an influxd shared by the tests of this package (started on
// first use). Call StopShared from TestMain after m.Run so that the server
// never outlives the test binary; Pdeathsig kills it if TestMain cannot.
// Give each test its own database with NewDB.
func Influx(t testing.TB) *InfluxServer {
	t.Helper()
	SkipIfShort(t)
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "infrawatch-influx-")
		if shared.err != nil {
			return
		}
		shared.srv, shared.err = StartInflux(context.Background(), shared.dir)
	})
	if shared.err != nil {
		t.Fatalf("start influxd: %v", shared.err)
	}
	return shared.srv
}

// StopShared stops the shared influxd started by Influx, if any, and
// removes its data.
func StopShared() {
	if shared.srv != nil {
		shared.srv.Stop()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
}

// OwnInflux starts a private influxd for a test that stops or kills it, and
// stops it at the end of the test.
func OwnInflux(t testing.TB) *InfluxServer {
	t.Helper()
	SkipIfShort(t)
	s, err := StartInflux(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("start influxd: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// MosquittoServer is a running Mosquitto broker on loopback.
type MosquittoServer struct {
	Addr string // 127.0.0.1:port
	URL  string // tcp://127.0.0.1:port
	Port int
	Dir  string
	p    *process
}

// MosquittoOptions configures a broker started by StartMosquitto.
type MosquittoOptions struct {
	// Extra is appended to the generated mosquitto.conf (e.g. password_file
	// and acl_file lines for auth tests).
	Extra string
	// DenyAnonymous sets allow_anonymous false; anonymous clients are
	// allowed otherwise.
	DenyAnonymous bool
}

// MosquittoPath finds the mosquitto binary: $PATH, then the sbin folders
// that packages install it in (often not on a user's $PATH).
func MosquittoPath() (string, error) {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("mosquitto not found: apt-get install mosquitto")
}

// StartMosquitto starts a Mosquitto broker in dir (created when missing) on
// a free loopback port and waits until it accepts connections. It has
// persistence on (so persistent sessions survive a broker restart) and
// unlimited in-flight and queued messages (so the broker itself never
// drops). Use it from TestMain or a bench; tests use Mosquitto.
func StartMosquitto(ctx context.Context, dir string, opts MosquittoOptions) (*MosquittoServer, error) {
	bin, err := MosquittoPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create mosquitto dir: %w", err)
	}
	anon := "true"
	if opts.DenyAnonymous {
		anon = "false"
	}
	// Started as root, Mosquitto drops to the mosquitto user, which cannot
	// write a root-owned temporary directory: it would then save no
	// sessions (logging only "Permission denied" on save) and forget them
	// on a restart, which loses what devices publish before ingest
	// subscribes again. Stay the user the tests run as.
	user := ""
	if os.Geteuid() == 0 {
		user = "user root"
	}
	logf, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		return nil, fmt.Errorf("create mosquitto log: %w", err)
	}
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		conf := fmt.Sprintf(`listener %d 127.0.0.1
%s
allow_anonymous %s
persistence true
persistence_location %s/
autosave_interval 1
max_inflight_messages 0
max_queued_messages 0
max_queued_bytes 0
log_dest stdout
log_type error
log_type warning
%s
`, port, user, anon, dir, opts.Extra)
		confPath := filepath.Join(dir, "mosquitto.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			return nil, fmt.Errorf("write mosquitto config: %w", err)
		}
		s := &MosquittoServer{
			Addr: fmt.Sprintf("127.0.0.1:%d", port),
			URL:  fmt.Sprintf("tcp://127.0.0.1:%d", port),
			Port: port,
			Dir:  dir,
			p:    &process{name: "mosquitto", args: []string{bin, "-c", confPath}, log: logf},
		}
		err = s.start(ctx)
		if err == nil && !s.p.exited() {
			return s, nil
		}
		if err == nil {
			err = fmt.Errorf("mosquitto on port %d exited at start-up (port taken?)", port)
		}
		if !s.p.exited() || attempt == portAttempts {
			s.p.stop(true)
			return nil, err
		}
	}
}

// Mosquitto starts a broker as StartMosquitto does, in the test's temporary
// folder, and stops it at the end of the test.
func Mosquitto(t testing.TB, opts MosquittoOptions) *MosquittoServer {
	t.Helper()
	SkipIfShort(t)
	s, err := StartMosquitto(context.Background(), t.TempDir(), opts)
	if err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Start (re)starts the broker and waits until it accepts connections.
func (s *MosquittoServer) Start() error { return s.start(context.Background()) }

func (s *MosquittoServer) start(ctx context.Context) error {
	if err := s.p.start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	s.p.mu.Lock()
	done := s.p.done
	s.p.mu.Unlock()
	return waitFor(ctx, "mosquitto "+s.Addr, done, func() bool {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// PID returns the broker's process id, or 0 while it is stopped.
func (s *MosquittoServer) PID() int { return s.p.pid() }

// Stop stops the broker (SIGTERM: it saves its persistence file).
func (s *MosquittoServer) Stop() { s.p.stop(false) }

// Pause freezes the broker with SIGSTOP.
func (s *MosquittoServer) Pause() error { return s.p.signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (s *MosquittoServer) Resume() error { return s.p.signal(syscall.SIGCONT) }
