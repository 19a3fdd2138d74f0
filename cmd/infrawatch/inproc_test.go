package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// TestFaultServeKill9Embedded: with the embedded broker, ingest is in the
// same process as the broker, so nobody else holds a message for it. The
// broker sends a device's PUBACK only once ingest has stored or spooled the
// reading. serve is killed with SIGKILL mid-stream (2,500 readings/s) and
// restarted on the same port: every reading a device got a PUBACK for is
// in InfluxDB, exactly once per point; what was not acknowledged the
// devices publish again.
func TestFaultServeKill9Embedded(t *testing.T) {
	influx := testenv.Influx(t)
	bin := os.Getenv("IW_KILL9_BIN") // an older build, to show it loses readings
	if bin == "" {
		bin = buildInfrawatch(t)
	}
	dir := t.TempDir()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.MustFreePort(t))
	mqttAddr := fmt.Sprintf("127.0.0.1:%d", testenv.MustFreePort(t))
	ts := &testSystem{t: t, influx: influx, db: testenv.NewDB(t), api: "http://" + httpAddr, mqtt: "tcp://" + mqttAddr}
	logf, err := os.Create(filepath.Join(dir, "serve.log"))
	require.NoError(t, err)
	p := &serveProcess{t: t, bin: bin, log: logf, env: []string{
		"INFRAWATCH_HTTP_LISTEN=" + httpAddr,
		"INFRAWATCH_BROKER_LISTEN=" + mqttAddr,
		"INFRAWATCH_INFLUX_URL=" + influx.URL,
		"INFRAWATCH_INFLUX_BUCKET=" + ts.db,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(dir, "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(dir, "spool"),
		"INFRAWATCH_AUTH_ADMIN_TOKEN=" + testAdminToken,
		"INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000", "INFRAWATCH_INGEST_DEVICE_BURST=1000",
		"INFRAWATCH_LOG_LEVEL=warn",
	}}
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("serve log:\n%s", b)
		}
	})
	p.start(ts.api)
	s := startStream(t, ts.mqtt, fleet(ts, "tc", 10), 5, 20*time.Millisecond) // 2,500 readings/s
	time.Sleep(2 * time.Second)
	before := s.total()
	p.kill(syscall.SIGKILL)
	killedAt := s.total()
	require.Positive(t, before, "readings were acknowledged before the kill")
	time.Sleep(time.Second) // devices get no answer meanwhile
	p.start(ts.api)
	time.Sleep(3 * time.Second)
	sent := s.end()
	require.Greater(t, s.total(), killedAt, "the devices reconnected and the stream went on")
	requireAllStored(t, ts, sent, 30*time.Second)
	requireAccounting(t, ts.api)
}
