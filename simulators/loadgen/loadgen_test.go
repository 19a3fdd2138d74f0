package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// buildInfrawatch builds cmd/infrawatch into a temporary folder: the test
// cannot import package main, so it runs the binary as `bench --self` does.
func buildInfrawatch(t *testing.T) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "infrawatch")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/infrawatch")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), "go build ./cmd/infrawatch:\n%s", out.String())
	return bin
}

// startTestSystem starts infrawatch (built from this tree) with its own
// influxd, stopped at the end of the test; its log is shown if it failed.
func startTestSystem(ctx context.Context, t *testing.T) *System {
	t.Helper()
	sys, err := StartSystem(ctx, SystemOptions{Binary: buildInfrawatch(t), Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("infrawatch serve log:\n%s", sys.LogTail(4000))
		}
		sys.Close()
	})
	return sys
}

func TestBenchAgainstRealSystem(t *testing.T) {
	testenv.SkipIfShort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sys := startTestSystem(ctx, t)
	require.Positive(t, sys.ServePID)
	require.Positive(t, sys.InfluxPID, "influxd found by its config path")

	for _, qos := range []byte{1, 0} {
		o := sys.Options()
		o.Devices, o.Rate, o.Duration, o.QoS = 20, 500, 3*time.Second, qos
		r, err := Run(ctx, o)
		require.NoError(t, err, "qos %d", qos)

		var table bytes.Buffer
		require.NoError(t, r.WriteTable(&table))
		t.Logf("QoS %d:\n%s", qos, table.String())

		assert.Equal(t, int64(1500), r.Sent, "rate × duration")
		assert.Equal(t, r.Sent, r.Acknowledged)
		assert.Zero(t, r.PublishErrors)
		assert.Equal(t, r.Sent, r.Stored, "every sent reading is in InfluxDB")
		assert.Zero(t, r.Lost)
		assert.Equal(t, float64(r.Sent), r.ReportedStored, "infrawatch's own count agrees")
		assert.Zero(t, r.Rejected)
		assert.True(t, r.ZeroLoss())
		assert.InDelta(t, 500, r.SendRate, 50)
		assert.Positive(t, r.StoredRate)
		assert.Positive(t, r.LagP50Ms)
		assert.GreaterOrEqual(t, r.LagP99Ms, r.LagP50Ms)
		for _, name := range []string{"infrawatch", "influxd", "loadgen"} {
			require.Contains(t, r.Procs, name)
			assert.Positive(t, r.Procs[name].CPUSeconds, name)
		}
		assert.Positive(t, r.Procs["infrawatch"].PeakRSSBytes)
		if qos == 1 {
			// Disabled between the runs: the second run must put them
			// back as the bench defines them.
			for _, rule := range benchRules() {
				rule["enabled"] = false
				body, err := json.Marshal(rule)
				require.NoError(t, err)
				req, err := http.NewRequestWithContext(ctx, http.MethodPut, o.APIURL+"/api/v1/rules/"+rule["id"].(string), bytes.NewReader(body))
				require.NoError(t, err)
				req.Header.Set("Authorization", "Bearer "+o.Token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				require.Equal(t, http.StatusOK, resp.StatusCode, "disable %s", rule["id"])
			}
		}
	}

	// Both runs evaluated the bench's alert rules: the first created them,
	// the second replaced the disabled ones (an existing id answers 409 to
	// the create).
	o := sys.Options()
	for _, want := range benchRules() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.APIURL+"/api/v1/rules/"+want["id"].(string), nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+o.Token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var got struct {
			Kind     string `json:"kind"`
			Enabled  bool   `json:"enabled"`
			Selector struct {
				Type string `json:"type"`
			} `json:"selector"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, want["id"])
		assert.Equal(t, want["kind"], got.Kind)
		assert.True(t, got.Enabled)
		assert.Equal(t, DeviceType, got.Selector.Type)
	}
	// serve exports the live heap that the memory bench reads.
	m, err := scrape(ctx, o.APIURL)
	require.NoError(t, err)
	assert.Positive(t, m.liveHeap, "go_gc_heap_live_bytes")
}

func TestRampStopsAtFirstFailure(t *testing.T) {
	testenv.SkipIfShort(t)
	bin := buildInfrawatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sys, err := StartSystem(ctx, SystemOptions{Binary: bin})
	require.NoError(t, err)
	t.Cleanup(sys.Close)

	o := sys.Options()
	o.Devices = 10
	var seen []float64
	// Tiny rates pass; with 2 s steps the drain (ingest's flush interval
	// and the poll) weighs more than in a real ramp, so the tolerance is
	// wide. The failing verdicts are table-tested in TestJudge.
	rr, err := Ramp(ctx, RampOptions{Run: o, Steps: []float64{200, 400}, StepDuration: 2 * time.Second, Tolerance: 0.5,
		OnStep: func(s Step) { seen = append(seen, s.OfferedRate) }})
	require.NoError(t, err)
	var table bytes.Buffer
	require.NoError(t, rr.WriteTable(&table))
	t.Logf("\n%s", table.String())
	assert.Equal(t, []float64{200, 400}, seen)
	require.Len(t, rr.Steps, 2)
	for _, s := range rr.Steps {
		assert.True(t, s.Pass, s.Reason)
		assert.Equal(t, s.Sent, s.Stored)
		assert.Equal(t, int64(2*s.OfferedRate), s.Sent)
	}
	assert.Equal(t, 400.0, rr.Best)
	assert.Equal(t, "last step passed", rr.StoppedBy)
}

// TestMosquittoSystemWithWebsocketClients runs infrawatch behind a private
// Mosquitto with websocket clients on the stream: every stored reading
// reaches every client, with a measured latency.
func TestMosquittoSystemWithWebsocketClients(t *testing.T) {
	testenv.SkipIfShort(t)
	if _, err := MosquittoPath(); err != nil {
		t.Skip(err)
	}
	bin := buildInfrawatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sys, err := StartSystem(ctx, SystemOptions{Mode: ModeMosquitto, Binary: bin, Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("infrawatch serve log:\n%s", sys.LogTail(4000))
		}
		sys.Close()
	})
	require.Positive(t, sys.MosquittoPID)
	o := sys.Options()
	o.Devices, o.Rate, o.Duration, o.QoS, o.WSClients = 10, 200, 2*time.Second, 1, 5
	r, err := Run(ctx, o)
	require.NoError(t, err)
	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	t.Logf("\n%s", table.String())
	assert.True(t, r.ZeroLoss())
	assert.Equal(t, int64(400), r.Stored)
	require.Contains(t, r.Procs, "mosquitto")
	require.NotNil(t, r.WS)
	assert.Equal(t, 5, r.WS.Connected)
	assert.Zero(t, r.WS.ClosedByServer)
	assert.Equal(t, r.WS.Expected, r.WS.Readings+int64(r.WS.Coalesced), "every stored reading reached every client or was coalesced")
	assert.Equal(t, r.WS.Readings, r.WS.Matched)
	assert.Positive(t, r.WS.P50Ms)
	assert.GreaterOrEqual(t, r.WS.P999Ms, r.WS.P99Ms)
}
