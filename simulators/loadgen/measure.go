package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux the project runs on (reading it needs cgo).
const clockTicks = 100

// procCPU returns the user+system CPU time pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/<pid>/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStatCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat: no command name in %.40q", s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc stat: %d fields after the name", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// selfCPU is the CPU time of this process, all threads, from getrusage
// (finer than the ticks of /proc).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procMemory returns the resident set size and its peak (VmRSS, VmHWM) of
// pid in bytes.
func procMemory(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	rss, peak = parseStatusMemory(string(b))
	return rss, peak, nil
}

func parseStatusMemory(s string) (rss, peak int64) {
	for line := range strings.Lines(s) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if name == "VmRSS" {
			rss = kb * 1024
		} else {
			peak = kb * 1024
		}
	}
	return rss, peak
}

// FindPID returns the pid of a process whose command line contains
// every one of parts, or 0. It finds the influxd that testenv started,
// whose pid testenv does not expose, by its config path.
func FindPID(parts ...string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		all := true
		for _, p := range parts {
			all = all && strings.Contains(cmd, p)
		}
		if all {
			return pid
		}
	}
	return 0
}

// metricsSample is the part of infrawatch's /metrics a run needs.
type metricsSample struct {
	received float64
	stored   float64
	rejected float64 // readings rejected, all reasons
	dropped  float64 // readings accepted but not stored, all reasons
	lag      histogram
	// Sums and counts of the batch size and write duration histograms.
	batchSum, batchCount float64
	writeSum, writeCount float64
	// The stream hub's counters: readings coalesced, clients dropped,
	// reading messages sent.
	coalesced, wsDropped, wsSent float64
	// The Go heap: in use, the next GC's target (twice the live heap after
	// the last GC with the default GOGC=100), and the live heap after the
	// last GC as the runtime counts it (0 if not exported).
	heapInuse, nextGC, liveHeap float64
	lastGC                      float64 // unix seconds of the last GC
}

// histogram is a cumulative Prometheus histogram: upper bounds and counts.
type histogram struct {
	bounds []float64 // ascending, the last +Inf
	counts []float64 // cumulative
}

// sub returns h minus an earlier sample of the same histogram.
func (h histogram) sub(earlier histogram) histogram {
	out := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
	for i := range h.counts {
		out.counts[i] = h.counts[i]
		if i < len(earlier.counts) {
			out.counts[i] -= earlier.counts[i]
		}
	}
	return out
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile
// does: linear within the bucket it falls in; the lowest bucket starts at
// 0; a quantile in the +Inf bucket is the largest finite bound. NaN when
// the histogram is empty.
func (h histogram) quantile(q float64) float64 {
	n := len(h.counts)
	if n == 0 || h.counts[n-1] == 0 {
		return math.NaN()
	}
	rank := q * h.counts[n-1]
	i := sort.Search(n, func(i int) bool { return h.counts[i] >= rank })
	if i >= n {
		i = n - 1
	}
	if math.IsInf(h.bounds[i], 1) {
		if i == 0 {
			return math.NaN()
		}
		return h.bounds[i-1]
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = h.bounds[i-1], h.counts[i-1]
	}
	in := h.counts[i] - below
	if in <= 0 {
		return h.bounds[i]
	}
	return lo + (h.bounds[i]-lo)*(rank-below)/in
}

// Metric names read from infrawatch's /metrics (ingest/metrics.go).
const (
	metricReceived = "infrawatch_ingest_readings_received_total"
	metricStored   = "infrawatch_ingest_readings_stored_total"
	metricRejected = "infrawatch_ingest_readings_rejected_total"
	metricDropped  = "infrawatch_ingest_dropped_total"
	metricLag      = "infrawatch_ingest_lag_seconds_bucket"
	metricBatch    = "infrawatch_ingest_batch_size"
	metricWrite    = "infrawatch_ingest_write_duration_seconds"

	metricCoalesced = "infrawatch_stream_readings_coalesced_total"
	metricWSDropped = "infrawatch_stream_clients_dropped_total"
	metricWSSent    = "infrawatch_stream_messages_sent_total"
	metricHeapInuse = "go_memstats_heap_inuse_bytes"
	metricNextGC    = "go_memstats_next_gc_bytes"
	metricLiveHeap  = "go_gc_heap_live_bytes"
	metricLastGC    = "go_memstats_last_gc_time_seconds"
)

var metricsClient = &http.Client{Timeout: 10 * time.Second}

// scrape reads infrawatch's /metrics.
func scrape(ctx context.Context, apiURL string) (metricsSample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiURL+"/metrics", nil)
	if err != nil {
		return metricsSample{}, fmt.Errorf("scrape metrics: %w", err)
	}
	resp, err := metricsClient.Do(req)
	if err != nil {
		return metricsSample{}, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return metricsSample{}, fmt.Errorf("scrape metrics %s/metrics: HTTP %d", apiURL, resp.StatusCode)
	}
	s, err := parseMetrics(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return metricsSample{}, fmt.Errorf("scrape metrics %s/metrics: %w", apiURL, err)
	}
	return s, nil
}

// parseMetrics reads the few series it needs from the Prometheus text
// format: `name{labels} value` lines; sums over labels for counters.
func parseMetrics(r io.Reader) (metricsSample, error) {
	var s metricsSample
	type bucket struct{ le, n float64 }
	var buckets []bucket
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || !(strings.HasPrefix(line, "infrawatch_ingest_") ||
			strings.HasPrefix(line, "infrawatch_stream_") || strings.HasPrefix(line, "go_memstats_") ||
			strings.HasPrefix(line, metricLiveHeap)) {
			continue
		}
		series, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		// A timestamp may follow the value.
		val, _, _ = strings.Cut(strings.TrimSpace(val), " ")
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return s, fmt.Errorf("bad value in %q", line)
		}
		name, labels, _ := strings.Cut(series, "{")
		switch name {
		case metricReceived:
			s.received += v
		case metricStored:
			s.stored += v
		case metricRejected:
			s.rejected += v
		case metricDropped:
			s.dropped += v
		case metricBatch + "_sum":
			s.batchSum += v
		case metricBatch + "_count":
			s.batchCount += v
		case metricWrite + "_sum":
			s.writeSum += v
		case metricWrite + "_count":
			s.writeCount += v
		case metricCoalesced:
			s.coalesced += v
		case metricWSDropped:
			s.wsDropped += v
		case metricWSSent:
			if t, _ := label(labels, "type"); t == "reading" {
				s.wsSent += v
			}
		case metricHeapInuse:
			s.heapInuse = v
		case metricNextGC:
			s.nextGC = v
		case metricLiveHeap:
			s.liveHeap = v
		case metricLastGC:
			s.lastGC = v
		case metricLag:
			le, ok := label(labels, "le")
			if !ok {
				continue
			}
			b, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return s, fmt.Errorf("bad le in %q", line)
			}
			buckets = append(buckets, bucket{b, v})
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].le < buckets[j].le })
	for _, b := range buckets {
		s.lag.bounds = append(s.lag.bounds, b.le)
		s.lag.counts = append(s.lag.counts, b.n)
	}
	return s, nil
}

// label finds name="value" in a label list like `a="x",le="0.5"}`.
func label(labels, name string) (string, bool) {
	i := strings.Index(labels, name+`="`)
	if i < 0 {
		return "", false
	}
	rest := labels[i+len(name)+2:]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return "", false
	}
	return rest[:j], true
}

// machineBusy returns the CPU time all processes of the machine have used
// (the busy columns of /proc/stat's "cpu" line), to tell how much of the
// machine other work took during a run.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	return parseMachineBusy(string(b))
}

func parseMachineBusy(s string) (time.Duration, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: unexpected %.60q", line)
	}
	var ticks int64
	// user nice system idle iowait irq softirq steal: all but idle and iowait.
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
