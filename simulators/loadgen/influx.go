package loadgen

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/http"
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
		DeviceType, countField, prefix)
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
