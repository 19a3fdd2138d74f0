package history

import (
	"bufio"
	"context"
	"encoding/csv"
	"io"
	"sort"
	"strconv"
	"time"
)

// Answer is the JSON answer of /history.
type Answer struct {
	Metric  string    `json:"metric"`
	Agg     Agg       `json:"agg"`
	GroupBy GroupBy   `json:"group_by"`
	Every   string    `json:"every"`
	Start   time.Time `json:"start"`
	Stop    time.Time `json:"stop"`
	// Source is the tier that answered: raw, rollup_1h or rollup_1h+raw.
	Source string   `json:"source"`
	Series []Series `json:"series"`
}

// Series is the windows of one device, site, domain or type.
type Series struct {
	Key    string   `json:"key"`
	Points []Sample `json:"points"`
}

// Sample is one window: its start and aggregate.
type Sample struct {
	Time  time.Time `json:"time"`
	Value float64   `json:"value"`
}

// Collect runs the plan into an Answer, series sorted by key, points by
// time. Its size is bounded by Query.MaxPoints.
func (s *Service) Collect(ctx context.Context, p Plan) (Answer, error) {
	q := p.Query
	a := Answer{Metric: q.Metric, Agg: q.Agg, GroupBy: q.GroupBy, Every: fmtDuration(q.Every),
		Start: q.Start, Stop: q.Stop, Source: p.Source, Series: []Series{}}
	idx := map[string]int{}
	err := s.Exec(ctx, p, func(pt Point) error {
		i, ok := idx[pt.Key]
		if !ok {
			i = len(a.Series)
			idx[pt.Key] = i
			a.Series = append(a.Series, Series{Key: pt.Key})
		}
		a.Series[i].Points = append(a.Series[i].Points, Sample{Time: pt.Time, Value: pt.Value})
		return nil
	})
	if err != nil {
		return Answer{}, err
	}
	sort.Slice(a.Series, func(i, j int) bool { return a.Series[i].Key < a.Series[j].Key })
	for _, ser := range a.Series {
		sort.SliceStable(ser.Points, func(i, j int) bool { return ser.Points[i].Time.Before(ser.Points[j].Time) })
	}
	return a, nil
}

// CSVHeader is the header row of a CSV export: the grouping's label
// (device_id, site, domain or type), time (RFC 3339, window start) and the
// aggregate's name (mean, p95, ...).
func CSVHeader(q Query) []string { return []string{q.GroupBy.Label(), "time", string(q.Agg)} }

// WriteCSV streams the plan as CSV to w, row by row, flushing every 1000
// rows: memory stays flat whatever the size. begin is called once, before
// the first byte is written (after the query answered, or failed), so that
// the caller can still send an error status when the query fails early;
// an error after begin means a truncated export. Rows come series by
// series, in time order within a series (with source rollup_1h+raw: the
// rollup windows of every series, then the raw ones).
func (s *Service) WriteCSV(ctx context.Context, w io.Writer, p Plan, begin func()) error {
	bw := bufio.NewWriterSize(w, 32<<10)
	cw := csv.NewWriter(bw)
	started := false
	start := func() error {
		started = true
		if begin != nil {
			begin()
		}
		return cw.Write(CSVHeader(p.Query))
	}
	flushEvery := func() error {
		cw.Flush()
		if err := cw.Error(); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		if f, ok := w.(interface{ Flush() }); ok {
			f.Flush()
		}
		return nil
	}
	rows := 0
	row := make([]string, 3)
	var tb, vb []byte
	err := s.Exec(ctx, p, func(pt Point) error {
		if !started {
			if err := start(); err != nil {
				return err
			}
		}
		tb = pt.Time.UTC().AppendFormat(tb[:0], time.RFC3339)
		vb = strconv.AppendFloat(vb[:0], pt.Value, 'f', -1, 64)
		row[0], row[1], row[2] = pt.Key, string(tb), string(vb)
		if err := cw.Write(row); err != nil {
			return err
		}
		rows++
		if rows%1000 == 0 {
			return flushEvery()
		}
		return nil
	})
	if err != nil {
		if started {
			_ = flushEvery()
		}
		return err
	}
	if !started {
		if err := start(); err != nil {
			return err
		}
	}
	return flushEvery()
}
