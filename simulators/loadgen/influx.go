package loadgen

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// countField is the field counted: every bench reading carries it once.
const countField = "lane_occupancy_percent"

var influxClient = &http.Client{Timeout: 60 * time.Second}

// countStored counts the bench readings of device ids starting with
// prefix between start and stop, with Flux through /api/v2/query (InfluxDB
// 2.x, and 1.8 with flux-enabled).
func countStored(ctx context.Context, o Options, prefix string, start, stop time.Time) (int64, error) {
	q := fmt.Sprintf(`from(bucket: %q)
  |> range(start: %s, stop: %s)
  |> filter(fn: (r) => r._measurement == %q and r._field == %q)
  |> filter(fn: (r) => r.device_id =~ /^%s/)
  |> group()
  |> count()`, o.DB, start.UTC().Format(time.RFC3339Nano), stop.UTC().Format(time.RFC3339Nano),
		DeviceType, o.CountField, prefix)
	u := o.InfluxURL + "/api/v2/query"
	if o.InfluxOrg != "" {
		u += "?org=" + o.InfluxOrg
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(q))
	if err != nil {
		return 0, fmt.Errorf("count stored readings: %w", err)
	}
	req.Header.Set("Content-Type", "application/vnd.flux")
	req.Header.Set("Accept", "application/csv")
	if o.InfluxToken != "" {
		req.Header.Set("Authorization", "Token "+o.InfluxToken)
	}
	resp, err := influxClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("count stored readings in %s: %w", o.InfluxURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("count stored readings: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("count stored readings in %s: HTTP %d: %.300s", o.InfluxURL, resp.StatusCode, body)
	}
	return parseFluxCount(string(body))
}

// parseFluxCount sums the _value column of a Flux CSV answer (no rows:
// nothing stored, 0).
func parseFluxCount(s string) (int64, error) {
	r := csv.NewReader(strings.NewReader(s))
	r.FieldsPerRecord = -1
	col := -1
	var total int64
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return 0, fmt.Errorf("parse Flux answer: %w", err)
		}
		if strings.HasPrefix(rec[0], "#") {
			continue
		}
		if col < 0 {
			for i, name := range rec {
				if name == "_value" {
					col = i
				}
			}
			if col < 0 {
				if len(rec) > 1 && rec[1] == "error" {
					return 0, fmt.Errorf("flux error: %v", rec)
				}
				return 0, fmt.Errorf("parse Flux answer: no _value column in %v", rec)
			}
			continue
		}
		if col >= len(rec) || rec[col] == "_value" {
			continue // a further table's header
		}
		n, err := strconv.ParseInt(rec[col], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse Flux answer: count %q: %w", rec[col], err)
		}
		total += n
	}
}

// influxWrites is the part of influxd 1.8's /debug/vars a Direct run needs:
// its HTTP write statistics (the private influxd of a bench system serves
// nothing else).
type influxWrites struct {
	requests, points, durationNs float64
}

// scrapeInfluxWrites reads the write statistics of influxd's HTTP
// listener(s).
func scrapeInfluxWrites(ctx context.Context, influxURL string) (influxWrites, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, influxURL+"/debug/vars", nil)
	if err != nil {
		return influxWrites{}, fmt.Errorf("read influxd statistics: %w", err)
	}
	resp, err := metricsClient.Do(req)
	if err != nil {
		return influxWrites{}, fmt.Errorf("read influxd statistics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return influxWrites{}, fmt.Errorf("read influxd statistics %s/debug/vars: HTTP %d", influxURL, resp.StatusCode)
	}
	return parseInfluxVars(io.LimitReader(resp.Body, 16<<20))
}

func parseInfluxVars(r io.Reader) (influxWrites, error) {
	var vars map[string]json.RawMessage
	if err := json.NewDecoder(r).Decode(&vars); err != nil {
		return influxWrites{}, fmt.Errorf("parse influxd statistics: %w", err)
	}
	var w influxWrites
	found := false
	for key, raw := range vars {
		if !strings.HasPrefix(key, "httpd") {
			continue
		}
		var st struct {
			Name   string             `json:"name"`
			Values map[string]float64 `json:"values"`
		}
		if json.Unmarshal(raw, &st) != nil || st.Name != "httpd" {
			continue
		}
		found = true
		w.requests += st.Values["writeReq"]
		w.points += st.Values["pointsWrittenOK"]
		w.durationNs += st.Values["writeReqDurationNs"]
	}
	if !found {
		return w, errors.New("parse influxd statistics: no httpd section")
	}
	return w, nil
}

// createDatabase creates db in an InfluxDB 1.8 (idempotent there); Telegraf's
// influxdb_v2 output does not create its bucket.
func createDatabase(ctx context.Context, influxURL, db string) error {
	form := url.Values{"q": {`CREATE DATABASE "` + strings.ReplaceAll(db, `"`, `\"`) + `"`}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, influxURL+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := influxClient.Do(req)
	if err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("create database %s: HTTP %d: %.300s", db, resp.StatusCode, body)
	}
	return nil
}
