package ingest

import (
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOutboundStore: inbound packets are not kept (the broker redelivers
// what ingest has not acknowledged); outbound ones (dead letters) are, for
// paho's resume.
func TestOutboundStore(t *testing.T) {
	s := newOutboundStore()
	s.Open()
	defer s.Close()

	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID = 1, 7
	dead := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket) // a dead letter
	dead.Qos, dead.MessageID, dead.TopicName = 1, 8, DeadLetterTopicPrefix+"malformed_json"

	s.Put("i.7", pub)
	s.Put("o.8", dead)
	assert.Nil(t, s.Get("i.7"), "an inbound publish is not stored")
	require.Equal(t, []string{"o.8"}, s.All())
	assert.Same(t, dead, s.Get("o.8"))

	s.Del("i.7") // the PUBACK paho sends: nothing to delete, no harm
	assert.Equal(t, []string{"o.8"}, s.All())
	s.Del("o.8")
	assert.Empty(t, s.All())
}
