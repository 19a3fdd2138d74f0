package ingest

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/infrawatch/infrawatch/store"
)

// batch is the points of several messages, written in one request.
type batch struct {
	buf    []byte
	points int
	chunks []*chunk
	// prev is closed once the previous batch's messages are acknowledged
	// (or left unacknowledged for good), done once this one's are: batches
	// are written concurrently but acknowledged in order (see writeLoop).
	prev, done chan struct{}
}

// awaitTurn waits until every earlier batch is acknowledged.
func (b *batch) awaitTurn() {
	if b.prev != nil {
		<-b.prev
		b.prev = nil
	}
}

// endTurn lets the next batch acknowledge; it waits for its own turn
// first. Idempotent.
func (b *batch) endTurn() {
	b.awaitTurn()
	if b.done != nil {
		close(b.done)
		b.done = nil
	}
}

func (b *batch) add(c *chunk) {
	b.buf = append(b.buf, c.lines...)
	b.points += c.points
	b.chunks = append(b.chunks, c)
}

func (b *batch) reset() {
	if cap(b.buf) > 16<<20 {
		b.buf = nil // an outsized batch once should not pin memory forever
	}
	b.buf, b.points = b.buf[:0], 0
	clear(b.chunks)
	b.chunks = b.chunks[:0]
}

// maxBatchBytes bounds the line protocol of a batch (plus the message that
// crossed it). BatchSize counts points, and a point can be tens of
// kilobytes (a router's counters for every interface): 5000 of them went
// over InfluxDB 1.8's default max-body-size (25 MB), and the 413 dropped
// every message of the batch. Readings of usual size (a few hundred bytes)
// reach BatchSize long before this. (A replay reads from one spool
// segment, at most 16 MiB.)
const maxBatchBytes = 4 << 20

// writeLoop collects chunks into batches and hands a batch to one of
// WriteConcurrency flushers when it holds BatchSize points (or
// maxBatchBytes) or its first chunk waited FlushInterval. A single writer
// kept one batch in flight and InfluxDB idle between requests; several in
// flight keep it busy. Each
// message is still acknowledged only once its own batch is stored (or
// spooled), and batches are acknowledged in the order they were formed, so
// the acknowledgements of stored messages leave in the order the writer
// took them, as with a single writer (a message a worker rejects or a
// status is acknowledged by the worker at once): acknowledging out of order over an MQTT connection lost
// messages across a broker restart (TestFaultBrokerRestartAndPause with
// Mosquitto). While every flusher is busy (writing, retrying a failed
// write, or waiting for its turn to acknowledge) the loop reads nothing,
// so the queues fill and ingest stops reading from the broker. It returns
// when the chunks channel is closed, after a last flush and once every
// flusher has finished.
func (in *Ingester) writeLoop(ctx context.Context) {
	n := in.o.WriteConcurrency
	jobs := make(chan *batch)
	// n+1 batches: the one being filled and one per flusher. A flusher
	// takes a batch only when idle, so after a hand-over a free one is
	// always there (free never blocks its senders: capacity n+1).
	free := make(chan *batch, n+1)
	for range n {
		free <- new(batch)
	}
	var flushers sync.WaitGroup
	for range n {
		flushers.Go(func() {
			for b := range jobs {
				if !in.flush(ctx, b) {
					// Run is ending: last attempt, bounded by
					// ShutdownTimeout.
					in.finalFlush(ctx, b)
				}
				b.endTurn()
				free <- b
			}
		})
	}
	defer flushers.Wait()
	defer close(jobs)

	b := new(batch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var last chan struct{} // done of the batch handed over last
	handOver := func() {
		b.prev, b.done = last, make(chan struct{})
		last = b.done
		jobs <- b
		b = <-free
	}
	for {
		var due <-chan time.Time
		if len(b.chunks) > 0 {
			due = timer.C
		}
		select {
		case c, ok := <-in.chunks:
			if !ok {
				if len(b.chunks) > 0 {
					handOver()
				}
				return
			}
			if len(b.chunks) == 0 {
				timer.Reset(in.o.FlushInterval)
			}
			b.add(c)
			if b.points >= in.o.BatchSize || len(b.buf) >= maxBatchBytes {
				timer.Stop()
				handOver()
			}
		case <-due:
			handOver()
		}
	}
}

// finalFlush writes what is left when Run ends, bounded by
// ShutdownTimeout (to InfluxDB, or the spool). Whatever cannot be written
// stays unacknowledged, for the broker to deliver again.
func (in *Ingester) finalFlush(ctx context.Context, b *batch) {
	if len(b.chunks) == 0 {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.o.ShutdownTimeout)
	defer cancel()
	if !in.flush(sctx, b) && (in.spool == nil || !in.toSpool(b)) {
		in.log.Warn("final write failed; the broker will deliver these messages again",
			"messages", len(b.chunks), "points", b.points)
		for _, c := range b.chunks {
			in.putChunk(c)
		}
		b.reset()
	}
}

// flush writes b, retrying retryable errors while ctx lasts. It returns
// false, keeping b, only when ctx ended first; otherwise the batch was
// stored, spooled, or refused for good, and its messages are acknowledged.
//
// With a spool, a batch goes to the spool on the first retryable failure,
// and straight there while InfluxDB is known to be down (the replayer
// finds out when it is back), so an outage costs one write timeout, not
// one per batch. Only when the spool is full does flush hold the batch and
// retry: the queues fill and ingest stops taking messages from the broker.
func (in *Ingester) flush(ctx context.Context, b *batch) bool {
	if len(b.chunks) == 0 {
		return true
	}
	if in.spool != nil && in.influxDown.Load() && in.toSpool(b) {
		return true
	}
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return false
		}
		actx, cancel := context.WithTimeout(ctx, in.o.WriteTimeout)
		start := in.o.Now()
		err := in.o.Writer.WriteLines(actx, b.buf, b.points)
		cancel()
		in.m.writeDuration.Observe(in.o.Now().Sub(start).Seconds())
		if err == nil {
			in.setInfluxDown(false)
			in.stored(b)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if !in.o.IsRetryable(err) {
			in.refused(b, err)
			return true
		}
		in.m.writeRetries.Inc()
		if in.spool != nil {
			in.setInfluxDown(true)
			if in.toSpool(b) {
				if attempt == 0 {
					in.log.Warn("write batch failed; spooling batches until InfluxDB is back", "err", err)
				}
				return true
			}
		}
		delay := in.o.RetryDelay(err, attempt)
		// Log the first failure, then every tenth: an outage should be
		// visible but not flood the log.
		if attempt%10 == 0 {
			in.log.Warn("write batch failed; retrying (messages stay unacknowledged)",
				"points", b.points, "messages", len(b.chunks), "attempt", attempt+1, "retry_in", delay, "err", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// stored acknowledges the messages of a written batch.
func (in *Ingester) stored(b *batch) {
	now := in.o.Now().UnixNano()
	in.m.batchSize.Observe(float64(b.points))
	in.m.readingsStored.Add(float64(b.points))
	b.awaitTurn()
	for _, c := range b.chunks {
		c.ack()
		for _, ts := range c.times {
			in.m.lag.Observe(float64(now-ts) / 1e9)
		}
		in.putChunk(c)
	}
	in.m.messagesStored.Add(float64(len(b.chunks)))
	in.accStored(len(b.chunks))
	b.reset()
}

func (in *Ingester) setInfluxDown(down bool) {
	if in.influxDown.Swap(down) == down {
		return
	}
	if down {
		in.m.influxUp.Set(0)
	} else {
		in.m.influxUp.Set(1)
	}
}

// toSpool writes b to the spool and, once it is on disk, acknowledges its
// messages. It returns false, keeping b, when the spool is full or failed.
func (in *Ingester) toSpool(b *batch) bool {
	err := in.spool.append(b.buf, len(b.chunks), b.points)
	if err != nil {
		if errors.Is(err, ErrSpoolFull) {
			in.m.spoolFull.Inc()
		} else {
			in.m.spoolErrors.Inc()
			in.log.Error("spool a batch", "err", err)
		}
		return false
	}
	b.awaitTurn()
	for _, c := range b.chunks {
		c.ack()
		in.putChunk(c)
	}
	in.accSpooled(len(b.chunks))
	b.reset()
	return true
}

// replayLoop writes the spool's batches to InfluxDB, oldest first, until
// ctx ends; the writer keeps writing live batches meanwhile. A record
// leaves the spool only once InfluxDB took it (or refused it for good).
func (in *Ingester) replayLoop(ctx context.Context) {
	attempt := 0
	for {
		r, ok, err := in.spool.read(in.o.BatchSize)
		if err != nil {
			in.m.spoolErrors.Inc()
			in.log.Error("read spool", "err", err)
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-in.spool.notify:
				continue
			}
		}
		actx, cancel := context.WithTimeout(ctx, in.o.WriteTimeout)
		err = in.o.Writer.WriteLines(actx, r.lines, r.pts)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil && in.o.IsRetryable(err) {
			in.setInfluxDown(true)
			in.m.writeRetries.Inc()
			if !sleepCtx(ctx, in.o.RetryDelay(err, attempt)) {
				return
			}
			attempt++
			continue
		}
		attempt = 0
		dropReason := ""
		if err != nil {
			in.log.Error("InfluxDB refused a spooled batch; dropping it", "points", r.pts, "messages", r.msgs, "err", err)
			in.m.dropped.WithLabelValues(ReasonWriteRejected).Add(float64(r.pts))
			in.enqueueDeadLetter(deadLetter{
				DeadLetter: DeadLetter{Reason: ReasonWriteRejected, Error: err.Error(), Readings: r.pts, ReceivedAt: in.o.Now()},
				payload:    r.lines, msg: in.msgSeq.Add(1), notReplayable: true,
			}, true)
			dropReason = ReasonWriteRejected
		} else {
			in.setInfluxDown(false)
			in.m.readingsStored.Add(float64(r.pts))
			in.m.batchSize.Observe(float64(r.pts))
		}
		if err := in.spool.commit(r); err != nil {
			// The batch is in InfluxDB but the index did not move: after
			// a restart it is written again (the same points).
			in.m.spoolErrors.Inc()
			in.log.Error("spool: record replay position", "err", err)
		}
		in.accReplayed(r.msgs, dropReason)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// refused dead-letters and acknowledges the messages of a batch InfluxDB
// will never take (400: bad line protocol, a field type conflict, ...).
// Sending the same bytes again cannot succeed, and holding them would stop
// ingest for good. On a 1.x "partial write" the valid points were stored;
// the whole batch is still counted as dropped, since the answer does not
// say which points were refused.
func (in *Ingester) refused(b *batch, err error) {
	in.log.Error("InfluxDB refused a batch; dropping it", "points", b.points, "messages", len(b.chunks),
		"partial", isPartial(err), "err", err)
	in.m.dropped.WithLabelValues(ReasonWriteRejected).Add(float64(b.points))
	b.awaitTurn()
	for _, c := range b.chunks {
		in.enqueueDeadLetter(deadLetter{
			DeadLetter: DeadLetter{
				Topic: c.msg.Topic(), Reason: ReasonWriteRejected, Error: err.Error(),
				DeviceID: c.deviceID, GatewayID: c.gatewayID, Readings: c.points, ReceivedAt: c.received,
			},
			payload: c.msg.Payload(), msg: in.msgSeq.Add(1),
		}, true)
		c.ack()
		in.m.messages.WithLabelValues(outcomeDropped).Inc()
		in.putChunk(c)
	}
	in.accDropped(ReasonWriteRejected, len(b.chunks))
	b.reset()
}

func isPartial(err error) bool {
	var we *store.WriteError
	return errors.As(err, &we) && we.Partial
}
