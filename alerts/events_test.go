package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEventLine(t *testing.T) {
	ts := time.Unix(1764121200, 123).UTC()
	cases := []struct {
		name string
		a    Alert
		want string
	}{
		{"plain", Alert{ID: "a-1", RuleID: "r1", DeviceID: "d1", Site: "north", Severity: "critical", State: StateFiring, Value: 81.5},
			`alert_events,device_id=d1,rule_id=r1,severity=critical,site=north,state=firing value=81.5,alert_id="a-1",transition="firing" 1764121200000000123` + "\n"},
		{"escapes and empty tags", Alert{ID: `a"\`, RuleID: "r1", DeviceID: "d1", Site: "North Quay, =2", State: StateResolved, Value: math.NaN()},
			`alert_events,device_id=d1,rule_id=r1,site=North\ Quay\,\ \=2,state=resolved alert_id="a\"\\",transition="firing" 1764121200000000123` + "\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, string(eventLine(nil, &tc.a, "firing", ts)))
		})
	}
}

// influxWriter is the EventWriter the store package provides, reduced to
// the v2-compatible write endpoint of InfluxDB 1.8.
type influxWriter struct {
	url, db string
}

func (w influxWriter) WriteLines(ctx context.Context, lines []byte, n int) error {
	u := w.url + "/api/v2/write?precision=ns&bucket=" + url.QueryEscape(w.db+"/autogen")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(lines))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("write %d lines: %d %s", n, resp.StatusCode, b)
	}
	return nil
}

func influxQL(t *testing.T, base, db, q string) [][]any {
	t.Helper()
	resp, err := http.PostForm(base+"/query", url.Values{"db": {db}, "q": {q}})
	require.NoError(t, err)
	defer resp.Body.Close()
	var out struct {
		Results []struct {
			Series []struct {
				Columns []string `json:"columns"`
				Values  [][]any  `json:"values"`
			} `json:"series"`
			Error string `json:"error"`
		} `json:"results"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	require.NotEmpty(t, out.Results)
	require.Empty(t, out.Results[0].Error)
	if len(out.Results[0].Series) == 0 {
		return nil
	}
	return out.Results[0].Series[0].Values
}

func TestAlertEventsReachInfluxDB(t *testing.T) {
	srv := testenv.Influx(t)
	db := testenv.NewDB(t)
	influxQL(t, srv.URL, "", "CREATE DATABASE "+db)
	w := influxWriter{url: srv.URL, db: db}

	site := `Quay 3, "east"=x`
	d := dev("d1", site)
	reg := newRegistry(d)
	e, err := NewEngine(context.Background(), Options{Lookup: reg.lookup, Events: w, Registerer: prometheus.NewRegistry()})
	require.NoError(t, err)
	_, err = e.CreateRule(context.Background(), Rule{Name: "hot", Enabled: true, Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, Severity: SeverityCritical})
	require.NoError(t, err)
	e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	e.Consume([]telemetry.Reading{reading("d1", at(time.Minute), "x", 10)})
	e.writeEvents(context.Background())
	assert.Zero(t, len(e.events))

	rows := influxQL(t, srv.URL, db, `SELECT "value", "alert_id", "state", "site", "severity" FROM alert_events ORDER BY time`)
	require.Len(t, rows, 2)
	assert.Equal(t, 90.0, rows[0][1])
	assert.Equal(t, "firing", rows[0][3])
	assert.Equal(t, site, rows[0][4])
	assert.Equal(t, "critical", rows[0][5])
	assert.Equal(t, "resolved", rows[1][3])
	assert.Equal(t, rows[0][2], rows[1][2], "same alert id")
}
