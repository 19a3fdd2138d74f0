package store

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the write path. Several Stores may share one Registerer (tests,
// or a second store in one process): they then share the collectors.
type metrics struct {
	writeDuration prometheus.Histogram
	points        prometheus.Counter
	bytes         prometheus.Counter
	errors        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		writeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "infrawatch_influx_write_duration_seconds",
			Help:    "Time of one batch write to InfluxDB, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12), // 1ms .. ~60s
		}),
		points: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infrawatch_influx_points_written_total",
			Help: "Points InfluxDB accepted.",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "infrawatch_influx_write_bytes_total",
			Help: "Line protocol bytes InfluxDB accepted.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_influx_write_errors_total",
			Help: "Failed batch writes to InfluxDB by kind (network, timeout, canceled, server, throttled, bad_request, unauthorized, not_found, too_large, other).",
		}, []string{"kind"}),
	}
	for _, k := range errorKinds {
		m.errors.WithLabelValues(k)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.writeDuration = register(reg, m.writeDuration, &err)
	m.points = register(reg, m.points, &err)
	m.bytes = register(reg, m.bytes, &err)
	m.errors = register(reg, m.errors, &err)
	return m, err
}

// register registers c, or returns the collector already registered under
// its name; the first failure of any other kind is kept in *errp.
func register[C prometheus.Collector](reg prometheus.Registerer, c C, errp *error) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	if *errp == nil {
		*errp = err
	}
	return c
}
