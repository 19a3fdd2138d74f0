package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// child is a server process the bench started: Mosquitto or Telegraf.
type child struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// startChild starts args in its own process group (so a Ctrl-C reaches the
// bench, which stops it in order), killed if the bench dies, its output in
// logPath.
func startChild(name string, args, env []string, logPath string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create %s log: %w", name, err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{}), logPath: logPath}
	go func() { _ = cmd.Wait(); close(c.done) }()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop sends SIGTERM, and SIGKILL after 15 s.
func (c *child) stop() {
	if c == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// logTail returns the last n bytes of the child's output.
func (c *child) logTail(n int64) string { return tail(c.logPath, n) }

// waitTCP waits until addr accepts connections, the child exits or ctx ends.
func (c *child) waitTCP(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s on %s: %w", c.name, addr, ctx.Err())
		case <-c.done:
			return fmt.Errorf("%s exited during start-up:\n%s", c.name, c.logTail(2000))
		case <-tick.C:
		}
	}
}

// MosquittoPath finds the mosquitto binary.
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

// startMosquitto starts a private Mosquitto on a free loopback port,
// configured as internal/testenv's test broker: anonymous, persistence on
// (persistent sessions are what a QoS 1 consumer relies on), in-flight and
// queued messages unlimited (so the broker itself never drops).
func startMosquitto(ctx context.Context, dir string) (*child, string, error) {
	bin, err := MosquittoPath()
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("create mosquitto folder: %w", err)
	}
	port, err := testenv.FreePort()
	if err != nil {
		return nil, "", err
	}
	conf := fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
persistence true
persistence_location %s/
autosave_interval 1
max_inflight_messages 0
max_queued_messages 0
max_queued_bytes 0
log_dest stdout
log_type error
log_type warning
`, port, dir)
	confPath := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, "", fmt.Errorf("write mosquitto config: %w", err)
	}
	c, err := startChild("mosquitto", []string{bin, "-c", confPath}, nil, filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := c.waitTCP(ctx, addr, 20*time.Second); err != nil {
		c.stop()
		return nil, "", err
	}
	return c, "tcp://" + addr, nil
}
