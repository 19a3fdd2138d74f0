package alerts

import (
	"slices"
	"sync"
	"time"
)

// The outbox makes notifications survive a restart. Notifiers queue and
// retry in memory, and Close cuts short what is still queued or between
// retries; the alert's LastNotifiedAt was set when it was handed over, so
// nothing else would send it again and a page that fired seconds before a
// deploy would be lost. So the engine records each notification with the
// destinations it is for (webhook URLs, DestMQTT) and persists that with
// the alert (Flush); a notifier reports each destination it has finished
// with (Notification.Done) and the record shrinks, then goes. At start-up
// Run hands the notifiers what is left, narrowed to the destinations that
// still owe it.
//
// Delivery is at least once: a notification that reached its receiver
// just before shutdown, before its Done was persisted, is sent again.
// Receivers drop such duplicates by the delivery id (X-Infrawatch-Delivery
// and the payload's delivery_id), the same on every retry and restart.
// Without a restart nothing is sent twice. It is bounded: a notification
// older than Options.RedeliverWithin is not sent again, and at most
// maxOutbox are tracked.

// Delivery is a notification that some of its destinations still owe.
type Delivery struct {
	Key string `json:"key"`
	// At is when the engine first handed it to the notifiers (engine
	// clock): RedeliverWithin counts from it.
	At time.Time `json:"at"`
	// Notification is narrowed to the destinations still owed: Webhooks
	// lists the URLs, MQTT whether DestMQTT is one.
	Notification Notification `json:"notification"`
}

func (d *Delivery) owed() bool { return len(d.Notification.Webhooks) > 0 || d.Notification.MQTT }

// maxOutbox bounds the notifications tracked; beyond it they are still
// sent, but not again after a restart (counted).
const maxOutbox = 10000

// outbox is the engine's record of notifications not yet finished with,
// guarded by its own mutex: notifiers report from their goroutines.
type outbox struct {
	mu      sync.Mutex
	pending map[string]*Delivery // key → delivery
	dirty   map[string]struct{}  // keys changed since the last Flush
	resend  []Delivery           // loaded at start-up, for Run to hand over
}

func newOutbox() *outbox {
	return &outbox{pending: map[string]*Delivery{}, dirty: map[string]struct{}{}}
}

// track records n (its Key set) before it is handed to the notifiers and
// sets n.Done to report to the engine. Caller may hold e.mu.
func (e *Engine) track(n *Notification, at time.Time) {
	if len(n.Webhooks) == 0 && !n.MQTT {
		return
	}
	ob := e.outbox
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if _, ok := ob.pending[n.Key]; !ok && len(ob.pending) >= maxOutbox {
		e.m.outboxDropped.Inc()
		return
	}
	d := &Delivery{Key: n.Key, At: at, Notification: *n}
	// The rule's slice is shared; Done shrinks this copy.
	d.Notification.Webhooks = slices.Clone(n.Webhooks)
	ob.pending[n.Key] = d
	ob.dirty[n.Key] = struct{}{}
	n.Done = e.doneFunc(n.Key)
}

func (e *Engine) doneFunc(key string) func(string) {
	return func(dest string) { e.delivered(key, dest) }
}

// delivered records that dest has finished with the notification key.
func (e *Engine) delivered(key, dest string) {
	ob := e.outbox
	ob.mu.Lock()
	d := ob.pending[key]
	if d == nil {
		ob.mu.Unlock()
		return
	}
	n := &d.Notification
	if i := slices.Index(n.Webhooks, dest); i >= 0 {
		n.Webhooks = slices.Delete(n.Webhooks, i, i+1)
	} else if dest == DestMQTT {
		n.MQTT = false
	}
	if !d.owed() {
		delete(ob.pending, key)
	}
	ob.dirty[key] = struct{}{}
	ob.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// loadOutbox reads what the last run left undelivered: what is older than
// RedeliverWithin, or beyond maxOutbox, is deleted instead (counted).
func (e *Engine) loadOutbox(ds []Delivery, now time.Time) {
	ob := e.outbox
	ob.mu.Lock()
	defer ob.mu.Unlock()
	for i := range ds {
		d := ds[i]
		if !d.owed() || now.Sub(d.At) > e.o.RedeliverWithin || len(ob.pending) >= maxOutbox {
			ob.dirty[d.Key] = struct{}{}
			e.m.outboxDropped.Inc()
			continue
		}
		ob.pending[d.Key] = &d
		// Its own slice: delivered shrinks the pending one in place.
		r := d
		r.Notification.Webhooks = slices.Clone(d.Notification.Webhooks)
		ob.resend = append(ob.resend, r)
	}
}

// redeliver hands the notifiers what the last run left undelivered, each
// narrowed to the destinations that still owe it. Run calls it once.
func (e *Engine) redeliver() {
	ob := e.outbox
	ob.mu.Lock()
	resend := ob.resend
	ob.resend = nil
	ob.mu.Unlock()
	if len(resend) == 0 {
		return
	}
	e.log.Info("re-sending alert notifications the last run did not deliver", "count", len(resend))
	for _, d := range resend {
		n := d.Notification
		n.Done = e.doneFunc(d.Key)
		for _, nt := range e.o.Notifiers {
			nt.Notify(n)
		}
	}
}

// pruneOutbox gives up notifications older than RedeliverWithin that no
// notifier reported on (one that never calls Done): deleted, counted.
func (e *Engine) pruneOutbox(now time.Time) {
	ob := e.outbox
	ob.mu.Lock()
	defer ob.mu.Unlock()
	for k, d := range ob.pending {
		if now.Sub(d.At) > e.o.RedeliverWithin {
			delete(ob.pending, k)
			ob.dirty[k] = struct{}{}
			e.m.outboxDropped.Inc()
		}
	}
}

// batch takes the changes to persist: the current state of each
// changed key, or its deletion.
func (ob *outbox) batch() (keys map[string]struct{}, save []Delivery, del []string) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if len(ob.dirty) == 0 {
		return nil, nil, nil
	}
	keys = ob.dirty
	ob.dirty = map[string]struct{}{}
	for k := range keys {
		if d, ok := ob.pending[k]; ok {
			c := *d
			c.Notification.Webhooks = slices.Clone(d.Notification.Webhooks)
			save = append(save, c)
		} else {
			del = append(del, k)
		}
	}
	return keys, save, del
}

// putBack marks keys changed again after a failed write.
func (ob *outbox) putBack(keys map[string]struct{}) {
	ob.mu.Lock()
	for k := range keys {
		ob.dirty[k] = struct{}{}
	}
	ob.mu.Unlock()
}
