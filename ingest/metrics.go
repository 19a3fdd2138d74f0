package ingest

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Message outcomes, the label of infrawatch_ingest_messages_total. Every
// message ends in exactly one: "stored" when its accepted readings reached
// InfluxDB (some of its readings may have been rejected), "rejected" when
// none was accepted, "dropped" when InfluxDB refused its batch for good,
// "status" for a device status message. A message still queued when Run
// ends is not acknowledged, so the broker delivers it again; it has no
// outcome in this process.
const (
	outcomeStored   = "stored"
	outcomeRejected = "rejected"
	outcomeDropped  = "dropped"
	outcomeStatus   = "status"
)

type metrics struct {
	messages          *prometheus.CounterVec // outcome
	messagesStored    prometheus.Counter     // messages{outcome="stored"}, resolved once: it is counted per batch
	readingsReceived  prometheus.Counter
	readingsStored    prometheus.Counter
	readingsRejected  *prometheus.CounterVec // reason
	rejected          *prometheus.CounterVec // reason: one per dead letter
	dropped           *prometheus.CounterVec // reason: readings
	deadLetters       prometheus.Counter
	deadLetterDropped prometheus.Counter
	batchSize         prometheus.Histogram
	writeDuration     prometheus.Histogram
	writeRetries      prometheus.Counter
	lag               prometheus.Histogram
	connected         prometheus.Gauge
	reconnects        prometheus.Counter
	sessionsLost      prometheus.Counter
	queue             prometheus.GaugeFunc

	// Message accounting: every message taken from the broker (or
	// replayed from the dead letters) is received once and ends in exactly
	// one of stored, rejected{reason}, dropped{reason}. On its way it is
	// pending (taken, not yet decided) or spooled (acknowledged, on disk,
	// not yet in InfluxDB), so at all times
	//   received + recovered = stored + rejected + dropped + pending + spooled
	// and at quiescence pending = spooled = 0.
	msgReceived  prometheus.Counter
	msgRecovered prometheus.Counter
	msgStored    prometheus.Counter
	msgRejected  *prometheus.CounterVec
	msgDropped   *prometheus.CounterVec
	msgPending   prometheus.Gauge
	msgSpooled   prometheus.Gauge

	spoolBytes          prometheus.Gauge
	spoolPoints         prometheus.Gauge
	spoolFull           prometheus.Counter
	spoolErrors         prometheus.Counter
	influxUp            prometheus.Gauge
	deadLetterStored    prometheus.GaugeFunc
	deadLettersReplayed prometheus.Counter
}

// newMetrics makes ingest's metrics. queueLen and deadStored are read at
// each scrape; deadStored from the store itself, so that it follows every
// add, eviction and replay in whatever order the goroutines made them.
func newMetrics(reg prometheus.Registerer, queueLen, deadStored func() float64) (*metrics, error) {
	const ns, sub = "infrawatch", "ingest"
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_total",
			Help: "MQTT messages handled, by outcome: stored, rejected, dropped, status."}, []string{"outcome"}),
		readingsReceived: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "readings_received_total",
			Help: "Readings decoded from well-formed messages."}),
		readingsStored: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "readings_stored_total",
			Help: "Readings written to InfluxDB."}),
		readingsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "readings_rejected_total",
			Help: "Readings of well-formed messages that were rejected, by reason."}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rejected_total",
			Help: "Rejections (one per dead letter: a message, or the readings of one device in it that share a reason), by reason."}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dropped_total",
			Help: "Accepted readings that could not be stored, by reason."}, []string{"reason"}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deadletters_published_total",
			Help: "Dead letters published to infrawatch/deadletter/<reason>."}),
		deadLetterDropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deadletters_dropped_total",
			Help: "Dead letters not published: queue full, or the broker did not take them."}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "batch_size",
			Help: "Points per batch written.", Buckets: []float64{1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000}}),
		writeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "write_duration_seconds",
			Help: "Duration of one batch write attempt.", Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12)}),
		writeRetries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "write_retries_total",
			Help: "Batch write attempts that failed with a retryable error."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "lag_seconds",
			Help:    "Time from a reading's ts to its storage in InfluxDB.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400}}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "mqtt_connected",
			Help: "1 while connected and subscribed to the broker."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconnects_total",
			Help: "Reconnection attempts to the broker after a lost connection."}),
		sessionsLost: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "mqtt_sessions_lost_total",
			Help: "Reconnects on which the broker had not kept ingest's persistent session (its queued messages are lost)."}),
		queue: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queue_length",
			Help: "Messages between the MQTT client and the writer."}, queueLen),
		msgReceived: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_received_total",
			Help: "Messages taken from the broker or replayed from the dead letters; each ends in exactly one of messages_stored_total, messages_rejected_total, messages_dropped_total."}),
		msgRecovered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_recovered_total",
			Help: "Messages found in the spool at start-up (acknowledged by an earlier process, not yet in InfluxDB)."}),
		msgStored: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_stored_total",
			Help: "Messages whose accepted readings are in InfluxDB (or, for a status message, applied to the live state)."}),
		msgRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_rejected_total",
			Help: "Messages of which no reading was accepted, by the reason of the first rejection."}, []string{"reason"}),
		msgDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_dropped_total",
			Help: "Accepted messages that could not be stored, by reason."}, []string{"reason"}),
		msgPending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "messages_pending",
			Help: "Messages taken and not yet stored, spooled, rejected or dropped."}),
		msgSpooled: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "messages_spooled",
			Help: "Acknowledged messages held in the disk spool, waiting for InfluxDB."}),
		spoolBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "spool_bytes",
			Help: "Bytes in the disk spool not yet replayed."}),
		spoolPoints: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "spool_points",
			Help: "Points in the disk spool not yet replayed."}),
		spoolFull: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "spool_full_total",
			Help: "Batches that found the spool full (their messages stay unacknowledged; the broker holds what follows)."}),
		spoolErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "spool_errors_total",
			Help: "Spool disk errors (append or replay)."}),
		influxUp: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "influx_up",
			Help: "1 while the last write to InfluxDB succeeded; 0 while batches go to the spool."}),
		deadLetterStored: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "deadletters_stored",
			Help: "Dead letters kept in memory for listing and replay."}, deadStored),
		deadLettersReplayed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deadletters_replayed_total",
			Help: "Messages run through ingest again from the dead letters."}),
	}
	m.influxUp.Set(1)
	for _, r := range rejectReasons {
		m.msgRejected.WithLabelValues(r)
		m.rejected.WithLabelValues(r)
		m.readingsRejected.WithLabelValues(r)
	}
	m.dropped.WithLabelValues(ReasonWriteRejected)
	m.msgDropped.WithLabelValues(ReasonWriteRejected)
	m.msgDropped.WithLabelValues(ReasonUnencodable)
	for _, o := range []string{outcomeStored, outcomeRejected, outcomeDropped, outcomeStatus} {
		m.messages.WithLabelValues(o)
	}
	m.messagesStored = m.messages.WithLabelValues(outcomeStored)
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.messages, m.readingsReceived, m.readingsStored, m.readingsRejected,
		m.rejected, m.dropped, m.deadLetters, m.deadLetterDropped, m.batchSize, m.writeDuration, m.writeRetries,
		m.lag, m.connected, m.reconnects, m.sessionsLost, m.queue,
		m.msgReceived, m.msgRecovered, m.msgStored, m.msgRejected, m.msgDropped, m.msgPending, m.msgSpooled,
		m.spoolBytes, m.spoolPoints, m.spoolFull, m.spoolErrors, m.influxUp, m.deadLetterStored, m.deadLettersReplayed} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return m, errors.Join(errs...)
}
