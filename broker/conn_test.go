package broker

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// deadlineRecorder is a net.Conn that records the deadlines set on it.
type deadlineRecorder struct {
	net.Conn
	both, read, write []time.Time
}

func (r *deadlineRecorder) SetDeadline(t time.Time) error {
	r.both = append(r.both, t)
	return nil
}

func (r *deadlineRecorder) SetReadDeadline(t time.Time) error {
	r.read = append(r.read, t)
	return nil
}

func (r *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	r.write = append(r.write, t)
	return nil
}

func TestDeadlineConn(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	rec := &deadlineRecorder{}
	c := &deadlineConn{Conn: rec}

	// The first deadline is set, deadlineSlack late; asking for later ones
	// within the slack changes nothing.
	assert.NoError(t, c.SetDeadline(t0))
	assert.NoError(t, c.SetDeadline(t0.Add(300*time.Millisecond)))
	assert.NoError(t, c.SetDeadline(t0.Add(deadlineSlack)))
	assert.Equal(t, []time.Time{t0.Add(deadlineSlack)}, rec.both)

	// Past the slack, or earlier than the deadline in place: set again.
	assert.NoError(t, c.SetDeadline(t0.Add(deadlineSlack+time.Millisecond)))
	assert.NoError(t, c.SetDeadline(t0))
	// No deadline (keepalive 0) is passed on at once.
	assert.NoError(t, c.SetDeadline(time.Time{}))
	assert.NoError(t, c.SetDeadline(time.Time{}))
	assert.Equal(t, []time.Time{
		t0.Add(deadlineSlack), t0.Add(2*deadlineSlack + time.Millisecond), t0.Add(deadlineSlack), {}, {},
	}, rec.both)

	// A write deadline (the acker's) means the next SetDeadline is real.
	rec.both = nil
	assert.NoError(t, c.SetDeadline(t0))
	assert.NoError(t, c.SetWriteDeadline(t0.Add(2*time.Second)))
	assert.NoError(t, c.SetDeadline(t0))
	assert.NoError(t, c.SetReadDeadline(t0))
	assert.NoError(t, c.SetDeadline(t0))
	assert.Equal(t, []time.Time{t0.Add(deadlineSlack), t0.Add(deadlineSlack), t0.Add(deadlineSlack)}, rec.both)
	assert.Equal(t, []time.Time{t0.Add(2 * time.Second)}, rec.write)
	assert.Equal(t, []time.Time{t0}, rec.read)
}
