package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// drainPoll is how often Drain looks at the service client's in-flight
// messages, and drainQuiet how many looks in a row must find none: a device
// connection being closed may still be handing over its last PUBLISH.
const (
	drainPoll  = 20 * time.Millisecond
	drainQuiet = 5
)

// Drain is the first step of a graceful shutdown that loses nothing the
// broker acknowledged. The broker PUBACKs a device's QoS 1 message as soon
// as it has queued it for ingest, and keeps that queue in memory only; so
// before the process ends, ingest must have taken and acknowledged (that
// is, stored) every message. Drain stops accepting connections, disconnects
// every client but the service identity's, then waits until the service
// client clientID has no QoS 1/2 message in flight. ctx bounds the wait.
// Close the broker afterwards, once ingest has stopped.
func (b *Broker) Drain(ctx context.Context, clientID string) error {
	b.mu.Lock()
	tcp := b.tcp
	b.mu.Unlock()
	if tcp == nil {
		return errors.New("drain mqtt broker: not started")
	}
	b.server.Listeners.Close(tcp.ID(), func(listener string) {
		for _, cl := range b.server.Clients.GetByListener(listener) {
			if id, ok := b.hook.identity(cl); ok && id.kind == kindService {
				continue
			}
			_ = b.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	})
	b.log.Info("mqtt broker draining: not accepting connections, devices disconnected")

	t := time.NewTicker(drainPoll)
	defer t.Stop()
	quiet := 0
	for {
		cl, ok := b.server.Clients.Get(clientID)
		switch {
		case !ok || cl.Closed():
			// Nobody to drain to: what is queued stays queued in the
			// session, which ends with the process.
			return fmt.Errorf("drain mqtt broker: service client %q is not connected", clientID)
		case cl.State.Inflight.Len() == 0:
			quiet++
			if quiet >= drainQuiet {
				return nil
			}
		default:
			quiet = 0
		}
		select {
		case <-ctx.Done():
			n := 0
			if ok {
				n = cl.State.Inflight.Len()
			}
			return fmt.Errorf("drain mqtt broker: %d messages to %s still unacknowledged: %w", n, clientID, ctx.Err())
		case <-t.C:
		}
	}
}

// StopAccepting closes the listener, so no new client connects, and leaves
// the connected clients alone. With ingest in process (Intercept), this is
// the first step of a graceful shutdown: ingest then stops taking
// messages, stores and acknowledges what it took while the clients are
// still there to receive their PUBACKs, and Close disconnects them. What
// ingest did not take is never acknowledged, so clients send it again.
func (b *Broker) StopAccepting() {
	b.mu.Lock()
	tcp := b.tcp
	b.mu.Unlock()
	if tcp == nil {
		return
	}
	b.server.Listeners.Close(tcp.ID(), func(string) {})
}
