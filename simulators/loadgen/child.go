package loadgen

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// child is a server process the bench started: Telegraf, started here, or
// Mosquitto, started by internal/testenv (mosquitto set, cmd nil).
type child struct {
	name      string
	cmd       *exec.Cmd
	done      chan struct{}
	logPath   string
	mosquitto *testenv.MosquittoServer
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

func (c *child) pid() int {
	if c.mosquitto != nil {
		return c.mosquitto.PID()
	}
	return c.cmd.Process.Pid
}

// stop sends SIGTERM, and SIGKILL after 15 s.
func (c *child) stop() {
	if c == nil {
		return
	}
	if c.mosquitto != nil {
		c.mosquitto.Stop()
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

// MosquittoPath finds the mosquitto binary.
func MosquittoPath() (string, error) { return testenv.MosquittoPath() }

// startMosquitto starts a private Mosquitto in dir configured as
// internal/testenv's test broker: anonymous, persistence on (persistent
// sessions are what a QoS 1 consumer relies on), in-flight and queued
// messages unlimited (so the broker itself never drops).
func startMosquitto(ctx context.Context, dir string) (*child, string, error) {
	srv, err := testenv.StartMosquitto(ctx, dir, testenv.MosquittoOptions{})
	if err != nil {
		if log := tail(filepath.Join(dir, "mosquitto.log"), 2000); log != "" {
			err = fmt.Errorf("%w\n%s", err, log)
		}
		return nil, "", err
	}
	return &child{name: "mosquitto", logPath: filepath.Join(srv.Dir, "mosquitto.log"), mosquitto: srv}, srv.URL, nil
}
