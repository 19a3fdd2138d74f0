package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/infrawatch/infrawatch/configs"
	"github.com/infrawatch/infrawatch/internal/testenv"
)

// TestStartFailureStopsWhatStarted: when the last start-up step fails (the
// HTTP port is taken), everything started before it is stopped: no
// goroutine is left running and the embedded broker's port is free again.
func TestStartFailureStopsWhatStarted(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs influxd")
	}
	influx := testenv.Influx(t)
	db := testenv.NewDB(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	brokerAddr := fmt.Sprintf("127.0.0.1:%d", testenv.MustFreePort(t))
	cfg, err := configs.Load("", []string{
		"INFRAWATCH_HTTP_LISTEN=" + taken.Addr().String(),
		"INFRAWATCH_BROKER_LISTEN=" + brokerAddr,
		"INFRAWATCH_INFLUX_URL=" + influx.URL,
		"INFRAWATCH_INFLUX_BUCKET=" + db,
		"INFRAWATCH_DEVICES_DB_PATH=" + filepath.Join(t.TempDir(), "infrawatch.db"),
		"INFRAWATCH_INGEST_SPOOL_DIR=" + filepath.Join(t.TempDir(), "spool"),
	})
	require.NoError(t, err)
	before := goleak.IgnoreCurrent()

	_, err = startServer(context.Background(), cfg, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "listen for HTTP")

	goleak.VerifyNone(t, before)
	ln, err := net.Listen("tcp", brokerAddr)
	require.NoError(t, err, "the embedded broker's port is released")
	ln.Close()
}
