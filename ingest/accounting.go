package ingest

// Reasons a message is counted as rejected or dropped besides the decoder's
// (labels of infrawatch_ingest_messages_rejected_total and
// infrawatch_ingest_messages_dropped_total).
const (
	// ReasonBadTopic: a message on a topic ingest does not handle (only a
	// misconfigured bridge sends one).
	ReasonBadTopic = "bad_topic"
	// ReasonUnencodable: readings of a device without a type (no
	// measurement to write them to).
	ReasonUnencodable = "unencodable"
	// ReasonSpoolCorrupt: spooled batches found damaged on disk at
	// start-up (not a torn last write, which was never acknowledged).
	ReasonSpoolCorrupt = "spool_corrupt"
)

// Accounting: see the metrics struct. These keep the invariant
//
//	received + recovered = stored + rejected + dropped + pending + spooled
//
// (each update touches one counter and one gauge, so a scrape between the
// two sees it off by the messages in flight; at quiescence it is exact).

func (in *Ingester) accReceived() {
	in.m.msgReceived.Inc()
	in.m.msgPending.Inc()
}

func (in *Ingester) accStored(n int) {
	in.m.msgStored.Add(float64(n))
	in.m.msgPending.Sub(float64(n))
}

func (in *Ingester) accRejected(reason string) {
	in.m.msgRejected.WithLabelValues(reason).Inc()
	in.m.msgPending.Dec()
}

func (in *Ingester) accDropped(reason string, n int) {
	in.m.msgDropped.WithLabelValues(reason).Add(float64(n))
	in.m.msgPending.Sub(float64(n))
}

// accSpooled: n messages were written to the spool and acknowledged.
func (in *Ingester) accSpooled(n int) {
	in.m.msgSpooled.Add(float64(n))
	in.m.msgPending.Sub(float64(n))
	in.spoolGauges()
}

// accReplayed: n spooled messages left the spool, stored (dropReason "")
// or refused by InfluxDB.
func (in *Ingester) accReplayed(n int, dropReason string) {
	in.m.msgSpooled.Sub(float64(n))
	if dropReason == "" {
		in.m.msgStored.Add(float64(n))
	} else {
		in.m.msgDropped.WithLabelValues(dropReason).Add(float64(n))
	}
	in.spoolGauges()
}

func (in *Ingester) spoolGauges() {
	if in.spool == nil {
		return
	}
	b, _, p := in.spool.stats()
	in.m.spoolBytes.Set(float64(b))
	in.m.spoolPoints.Set(float64(p))
}
