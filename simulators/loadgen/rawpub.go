package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Publishers of the load generator (Options.Publisher).
const (
	// PublisherRaw writes MQTT 3.1.1 packets straight to a TCP connection,
	// the readings of one connection due at a tick in one write. It is the
	// default because paho (goroutines, channels and a token per message)
	// cost the load generator as much CPU per reading as the system it
	// measures, so on a small machine the ramp measured the load generator.
	PublisherRaw = "raw"
	// PublisherPaho publishes through the Eclipse paho client, as a real
	// device library would.
	PublisherPaho = "paho"
)

// Bounds of a raw connection.
const (
	rawKeepAlive      = 30 * time.Second
	rawConnectTimeout = 15 * time.Second
	rawWriteTimeout   = 10 * time.Second
	// rawMaxBatch bounds the bytes one write carries; a connection that
	// catches up with a long backlog writes it in pieces of this size.
	rawMaxBatch = 32 << 10
	// rawMaxPacket bounds a packet the broker sends (only acks expected).
	rawMaxPacket = 64 << 10
	// rawReadBuffer holds a thousand PUBACKs (4 bytes each).
	rawReadBuffer = 4 << 10
)

// rawPingEvery is how often a raw connection sends PINGREQ (a variable
// for tests).
var rawPingEvery = rawKeepAlive / 2

// errConnectRefused is a CONNACK with a non-zero return code.
var errConnectRefused = errors.New("connection refused")

// rawConn is one device's MQTT 3.1.1 session on a TCP connection. The
// connection's publish goroutine encodes and writes PUBLISH packets; a
// reader goroutine counts PUBACKs; a keepalive goroutine sends PINGREQ.
// Writes are serialised by wmu.
type rawConn struct {
	nc  net.Conn
	br  *bufio.Reader
	qos byte
	// acked and failed are the owning conn's counters.
	acked, failed *atomic.Int64

	// The publisher's: a reused packet and write buffer, and the QoS 0
	// messages in wbuf (acknowledged once written, as paho does).
	pk     packets.Packet
	wbuf   bytes.Buffer
	queued int64
	nextID uint16

	wmu sync.Mutex // held for each write to nc

	// slots holds one entry per unacknowledged QoS 1 publish: a full
	// channel makes the publisher wait (maxInflight, as with paho).
	slots chan struct{}

	mu sync.Mutex
	// pending is a bitset of the packet ids awaiting their PUBACK;
	// outstanding counts them.
	pending     []uint64
	outstanding int64
	// closed means acks no longer count: the ack deadline passed, or the
	// connection was lost or closed. Outstanding publishes were then
	// counted as failed.
	closed bool

	down     chan struct{} // closed when the connection is lost or closed
	downOnce sync.Once
	stop     chan struct{} // closed by close: stops the keepalive
	wg       sync.WaitGroup
}

// dialRaw opens a clean MQTT 3.1.1 session for clientID on brokerURL
// (tcp:// or mqtt://), with credentials when username is not empty, and
// starts its reader and keepalive. acked and failed receive the outcome
// of each publish.
func dialRaw(ctx context.Context, brokerURL, clientID, username, password string, qos byte, acked, failed *atomic.Int64) (*rawConn, error) {
	u, err := url.Parse(brokerURL)
	if err != nil {
		return nil, fmt.Errorf("broker URL: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, rawConnectTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	// Cancelling ctx aborts the handshake's reads and writes.
	stopAbort := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	r := &rawConn{nc: nc, br: bufio.NewReaderSize(nc, rawReadBuffer), qos: qos, acked: acked, failed: failed,
		down: make(chan struct{}), stop: make(chan struct{})}
	err = r.handshake(clientID, username, password)
	if !stopAbort() || ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	if err == nil {
		err = nc.SetDeadline(time.Time{})
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	r.pk = packets.Packet{ProtocolVersion: 4, FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}}
	if qos > 0 {
		r.slots = make(chan struct{}, maxInflight)
		r.pending = make([]uint64, 1<<16/64)
	}
	r.wg.Add(2)
	go r.readLoop()
	go r.keepAlive()
	return r, nil
}

// handshake writes CONNECT and reads the CONNACK.
func (r *rawConn) handshake(clientID, username, password string) error {
	pk := packets.Packet{ProtocolVersion: 4, FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: clientID,
			Keepalive: uint16(rawKeepAlive / time.Second), Clean: true}}
	if username != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(username)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(password)
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return fmt.Errorf("encode CONNECT: %w", err)
	}
	if _, err := r.nc.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write CONNECT: %w", err)
	}
	fh, body, err := readPacket(r.br, nil)
	if err != nil {
		return fmt.Errorf("read CONNACK: %w", err)
	}
	if fh.Type != packets.Connack {
		return fmt.Errorf("read CONNACK: got packet type %d", fh.Type)
	}
	ack := packets.Packet{ProtocolVersion: 4, FixedHeader: fh}
	if err := ack.ConnackDecode(body); err != nil {
		return fmt.Errorf("decode CONNACK: %w", err)
	}
	if ack.ReasonCode != packets.CodeSuccess.Code {
		return fmt.Errorf("%w: return code %d", errConnectRefused, ack.ReasonCode)
	}
	return nil
}

// readPacket reads one packet's fixed header and body; body reuses buf.
func readPacket(br *bufio.Reader, buf []byte) (packets.FixedHeader, []byte, error) {
	var fh packets.FixedHeader
	hb, err := br.ReadByte()
	if err != nil {
		return fh, buf, err
	}
	if err := fh.Decode(hb); err != nil {
		return fh, buf, fmt.Errorf("fixed header: %w", err)
	}
	n, _, err := packets.DecodeLength(br)
	if err != nil {
		return fh, buf, fmt.Errorf("remaining length: %w", err)
	}
	if n > rawMaxPacket {
		return fh, buf, fmt.Errorf("packet type %d of %d bytes: over %d", fh.Type, n, rawMaxPacket)
	}
	fh.Remaining = n
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(br, buf); err != nil {
		return fh, buf, err
	}
	return fh, buf, nil
}

// readLoop counts PUBACKs until the connection ends.
func (r *rawConn) readLoop() {
	defer r.wg.Done()
	defer r.markDown()
	ack := packets.Packet{ProtocolVersion: 4}
	buf := make([]byte, 0, 64)
	for {
		fh, body, err := readPacket(r.br, buf)
		if err != nil {
			return
		}
		buf = body
		if fh.Type != packets.Puback {
			continue // PINGRESP; nothing else is expected
		}
		ack.FixedHeader = fh
		if ack.PubackDecode(body) != nil {
			return
		}
		r.ack(ack.PacketID)
	}
}

// ack counts the PUBACK of id if id awaits one and acks still count.
func (r *rawConn) ack(id uint16) {
	r.mu.Lock()
	if r.closed || r.pending == nil || r.pending[id/64]&(1<<(id%64)) == 0 {
		r.mu.Unlock()
		return
	}
	r.pending[id/64] &^= 1 << (id % 64)
	r.outstanding--
	r.mu.Unlock()
	r.acked.Add(1)
	<-r.slots // cannot block: the publish put one in before its id was pending
}

// closeAcks stops counting acks and counts the outstanding publishes as
// failed.
func (r *rawConn) closeAcks() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	r.failed.Add(r.outstanding)
	r.outstanding = 0
}

// markDown records that the connection is gone: outstanding publishes
// failed and later ones will.
func (r *rawConn) markDown() {
	r.closeAcks()
	r.downOnce.Do(func() { close(r.down) })
}

// keepAlive sends a PINGREQ every rawPingEvery, which keeps the
// connection open while the bench drains after publishing.
func (r *rawConn) keepAlive() {
	defer r.wg.Done()
	var ping bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	_ = pk.PingreqEncode(&ping)
	t := time.NewTicker(rawPingEvery)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-r.down:
			return
		case <-t.C:
		}
		if err := r.write(ping.Bytes()); err != nil {
			r.lose()
			return
		}
	}
}

func (r *rawConn) write(b []byte) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if err := r.nc.SetWriteDeadline(time.Now().Add(rawWriteTimeout)); err != nil {
		return err
	}
	_, err := r.nc.Write(b)
	return err
}

// lose ends a connection after a write failed; the reader then ends too.
func (r *rawConn) lose() {
	r.markDown()
	_ = r.nc.Close()
}

// publish queues one PUBLISH of payload to topic, writing what is queued
// first when it must wait for a free in-flight slot or the batch is full.
// It returns only ctx's error; a lost connection counts the publish failed.
func (r *rawConn) publish(ctx context.Context, topic string, payload []byte) error {
	select {
	case <-r.down:
		r.failed.Add(1)
		return nil
	default:
	}
	if r.qos > 0 {
		select {
		case r.slots <- struct{}{}:
		default:
			// Full: what is queued must go out for its acks to free a slot.
			r.flush()
			select {
			case r.slots <- struct{}{}:
			case <-r.down:
				r.failed.Add(1)
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		r.mu.Lock()
		for {
			r.nextID++
			if r.nextID != 0 && r.pending[r.nextID/64]&(1<<(r.nextID%64)) == 0 {
				break
			}
		}
		r.pending[r.nextID/64] |= 1 << (r.nextID % 64)
		r.outstanding++
		r.mu.Unlock()
		r.pk.PacketID = r.nextID
	} else {
		r.queued++
	}
	r.pk.TopicName, r.pk.Payload = topic, payload
	err := r.pk.PublishEncode(&r.wbuf)
	r.pk.Payload = nil
	if err != nil {
		// Cannot happen with a packet id set; count it rather than hide it.
		r.failed.Add(1)
		return nil
	}
	if r.wbuf.Len() >= rawMaxBatch {
		r.flush()
	}
	return nil
}

// flush writes the queued packets in one write. A failed write loses the
// connection: its queued and outstanding publishes count as failed.
func (r *rawConn) flush() {
	if r.wbuf.Len() == 0 {
		return
	}
	err := r.write(r.wbuf.Bytes())
	r.wbuf.Reset()
	q := r.queued
	r.queued = 0
	if err != nil {
		r.failed.Add(q)
		r.lose()
		return
	}
	r.acked.Add(q)
}

// awaitAcks writes what is queued and waits until every QoS 1 publish was
// acknowledged, the connection is lost, deadline closes or ctx ends;
// publishes still unacknowledged then count as failed.
func (r *rawConn) awaitAcks(ctx context.Context, deadline <-chan struct{}) {
	r.flush()
	if r.qos > 0 {
		// Filling every slot means every outstanding publish freed its own.
	wait:
		for i := 0; i < maxInflight; i++ {
			select {
			case r.slots <- struct{}{}:
			case <-r.down:
				break wait
			case <-deadline:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
	}
	r.closeAcks()
}

// close sends DISCONNECT, closes the connection and waits for its
// goroutines.
func (r *rawConn) close() {
	r.closeAcks()
	select {
	case <-r.down:
	default:
		var b bytes.Buffer
		pk := packets.Packet{ProtocolVersion: 4, FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
		if pk.DisconnectEncode(&b) == nil {
			_ = r.write(b.Bytes())
		}
	}
	close(r.stop)
	_ = r.nc.Close()
	r.wg.Wait()
	r.markDown()
}

// publishRaw is publish on a raw connection: the readings due at a tick
// are queued and written together. The schedule is publish's, tick for
// tick, so the system sees the same arrival pattern with either publisher.
func (c *conn) publishRaw(ctx context.Context, o Options, start time.Time, ackDeadline <-chan struct{}) {
	r := c.raw
	defer r.awaitAcks(ctx, ackDeadline)
	defer close(c.handed)

	c.schedule(ctx, o, start, func(payload []byte) bool {
		c.nSent.Add(1)
		return r.publish(ctx, c.topic, payload) == nil
	}, func() bool { r.flush(); return true })
}
