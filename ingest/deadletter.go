package ingest

import (
	"encoding/base64"
	"encoding/json"
	"time"
	"unicode/utf8"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// DeadLetterTopicPrefix is where rejected input is republished, followed by
// the reason: infrawatch/deadletter/<reason>.
const DeadLetterTopicPrefix = "infrawatch/deadletter/"

// DeadLetter is the JSON published for each rejection: the original topic
// and payload, why it was rejected, and which device it concerned.
//
// One dead letter is published per rejected message, or, when only part of
// a message is rejected, per device and reason within it (with Readings
// telling how many readings it covers, and Error describing the first).
// Payload is always the whole original payload.
type DeadLetter struct {
	Topic     string `json:"topic"`
	Reason    string `json:"reason"`
	Error     string `json:"error"`
	DeviceID  string `json:"device_id"`
	GatewayID string `json:"gateway_id,omitempty"`
	// Readings is the number of readings rejected, 0 when the payload
	// could not be read at all.
	Readings   int       `json:"readings,omitempty"`
	ReceivedAt time.Time `json:"received_at"`
	// Payload is the original payload, as a string when it is valid UTF-8,
	// else base64 with PayloadEncoding "base64".
	Payload         string `json:"payload"`
	PayloadEncoding string `json:"payload_encoding,omitempty"`
	// PayloadTruncated is set when Payload is only the first
	// MaxPayloadBytes of a larger payload (too_large): a dead letter must
	// not cost the memory the payload was rejected for.
	PayloadTruncated bool `json:"payload_truncated,omitempty"`
}

// deadLetter is a queued dead letter; the payload is encoded by the
// publisher, off the hot path. The payload slice belongs to the MQTT
// message and is never modified, so it can be shared.
type deadLetter struct {
	DeadLetter
	payload []byte
	// msg identifies the message within the process (dead letters of one
	// message share it); notReplayable marks a payload that cannot be run
	// again (cut, or line protocol from the spool).
	msg           uint64
	notReplayable bool
}

// deadLetterTimeout bounds the wait for the broker to take one dead letter.
const deadLetterTimeout = 5 * time.Second

// enqueueDeadLetter counts the rejection and queues its dead letter without
// blocking; a full queue drops it (and counts that).
func (in *Ingester) enqueueDeadLetter(dl deadLetter, dropped bool) {
	if !dropped {
		in.m.rejected.WithLabelValues(dl.Reason).Inc()
	}
	var cut bool
	dl.payload, cut = truncatePayload(dl.payload, in.o.MaxPayloadBytes)
	if cut {
		dl.PayloadTruncated, dl.notReplayable = true, true
	}
	in.dead.add(dl, dl.msg, !dl.notReplayable)
	select {
	case in.dlq <- dl:
	default:
		in.m.deadLetterDropped.Inc()
	}
}

// publishDeadLetters publishes queued dead letters until stop is closed,
// then what is left within a short grace period.
func (in *Ingester) publishDeadLetters(stop <-chan struct{}) {
	for {
		select {
		case dl := <-in.dlq:
			in.publishDeadLetter(dl, stop)
		case <-stop:
			grace := make(chan struct{})
			t := time.AfterFunc(2*time.Second, func() { close(grace) })
			defer t.Stop()
			for {
				select {
				case dl := <-in.dlq:
					in.publishDeadLetter(dl, grace)
				default:
					return
				}
			}
		}
	}
}

func (in *Ingester) publishDeadLetter(dl deadLetter, stop <-chan struct{}) {
	timer := time.NewTimer(deadLetterTimeout)
	defer timer.Stop()
	_ = in.publishDeadLetterWith(dl, func(t mqtt.Token) bool {
		select {
		case <-t.Done():
			return t.Error() == nil
		case <-stop:
			return false
		case <-timer.C:
			return false
		}
	})
}

func (in *Ingester) publishDeadLetterWith(dl deadLetter, wait func(mqtt.Token) bool) bool {
	dl.Payload, dl.PayloadEncoding = renderPayload(dl.payload)
	b, err := json.Marshal(dl.DeadLetter)
	if err != nil { // cannot happen: strings and a time
		in.m.deadLetterDropped.Inc()
		return false
	}
	if in.client == nil {
		if err := in.o.Local.Publish(DeadLetterTopicPrefix+dl.Reason, b); err != nil {
			in.m.deadLetterDropped.Inc()
			return false
		}
	} else if !wait(in.client.Publish(DeadLetterTopicPrefix+dl.Reason, 1, false, b)) {
		in.m.deadLetterDropped.Inc()
		return false
	}
	in.m.deadLetters.Inc()
	return true
}

// renderPayload returns a payload for JSON: as a string when it is valid
// UTF-8, else base64 with the encoding "base64".
func renderPayload(p []byte) (payload, encoding string) {
	if utf8.Valid(p) {
		return string(p), ""
	}
	return base64.StdEncoding.EncodeToString(p), "base64"
}
