package history

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// fieldTypeTTL bounds how long a field that became boolean may be read as
// a number (a failing query, then a fresh look).
const fieldTypeTTL = time.Minute

// fieldKey is one field of one measurement.
type fieldKey struct{ measurement, field string }

// schemaInfo is what 1.x's SHOW FIELD KEYS says about the raw bucket: which
// fields are not floats or integers. Converting every value with toFloat()
// (a Flux map, interpreted per row) costs 4-5 times the query; knowing the
// types lets the common float case skip it.
type schemaInfo struct {
	bools   []fieldKey // converted to 0/1
	strings []fieldKey // left out of the rollup
}

func (si *schemaInfo) isBool(metric string) bool {
	for _, k := range si.bools {
		if k.field == metric {
			return true
		}
	}
	return false
}

type schemaCache struct {
	mu     sync.Mutex
	at     time.Time
	info   *schemaInfo
	failed bool
}

// cachedSchema returns the field types if known and fresh, without I/O.
func (s *Service) cachedSchema() *schemaInfo {
	s.schema.mu.Lock()
	defer s.schema.mu.Unlock()
	if s.schema.info != nil && s.opts.Now().Sub(s.schema.at) < fieldTypeTTL {
		return s.schema.info
	}
	return nil
}

// fieldSchema returns the field types of the raw bucket, or nil when they
// cannot be known (no InfluxURL, InfluxDB 2.x, an error): callers then
// convert every value.
func (s *Service) fieldSchema(ctx context.Context) *schemaInfo {
	if s.opts.InfluxURL == "" {
		return nil
	}
	if v, ok := s.opts.Store.(interface{ IsV1() bool }); ok && !v.IsV1() {
		return nil
	}
	s.schema.mu.Lock()
	defer s.schema.mu.Unlock()
	now := s.opts.Now()
	if (s.schema.info != nil || s.schema.failed) && now.Sub(s.schema.at) < fieldTypeTTL {
		return s.schema.info
	}
	info, err := s.loadSchema(ctx)
	s.schema.at, s.schema.info, s.schema.failed = now, info, err != nil
	if err != nil {
		s.log.Debug("cannot read field types, converting every value", "err", err)
	}
	return info
}

func (s *Service) loadSchema(ctx context.Context) (*schemaInfo, error) {
	db, rp, _ := strings.Cut(s.opts.Bucket, "/")
	stmt := "SHOW FIELD KEYS ON " + influxIdent(db)
	if rp != "" {
		stmt += " FROM " + influxIdent(rp) + "./.*/"
	}
	body, err := s.influxQLBody(ctx, stmt)
	if err != nil {
		return nil, err
	}
	var res struct {
		Results []struct {
			Error  string `json:"error"`
			Series []struct {
				Name   string     `json:"name"`
				Values [][]string `json:"values"`
			} `json:"series"`
		} `json:"results"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, fmt.Errorf("decode field keys: %w", err)
	}
	info := &schemaInfo{}
	for _, r := range res.Results {
		if r.Error != "" {
			return nil, fmt.Errorf("field keys: %s", r.Error)
		}
		for _, ser := range r.Series {
			for _, v := range ser.Values {
				if len(v) != 2 {
					continue
				}
				switch v[1] {
				case "boolean":
					info.bools = append(info.bools, fieldKey{ser.Name, v[0]})
				case "string":
					info.strings = append(info.strings, fieldKey{ser.Name, v[0]})
				}
			}
		}
	}
	for _, l := range [][]fieldKey{info.bools, info.strings} {
		sort.Slice(l, func(i, j int) bool {
			return l[i].measurement < l[j].measurement || l[i].measurement == l[j].measurement && l[i].field < l[j].field
		})
	}
	return info, nil
}

// influxQLBody runs one statement through 1.x's /query endpoint and returns
// the answer's body.
func (s *Service) influxQLBody(ctx context.Context, stmt string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(s.opts.InfluxURL, "/")+"/query",
		strings.NewReader(url.Values{"q": {stmt}}.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user, pass, ok := strings.Cut(s.opts.InfluxAuth, ":"); ok {
		req.SetBasicAuth(user, pass)
	}
	resp, err := s.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("status %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}
