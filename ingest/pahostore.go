package ingest

import (
	"strings"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// inboundPrefix is how paho names the store keys of packets it received.
const inboundPrefix = "i."

// outboundStore is paho's memory store without the inbound side.
//
// paho stores every inbound QoS 1 PUBLISH from its arrival until its PUBACK
// is sent: a map insert and delete under a mutex per reading, 4 % of
// ingest's CPU behind Mosquitto at 40,000 readings/s. Nothing ever reads
// those entries back for QoS 1: after a reconnect paho's resume hands on
// only stored inbound PUBRELs (QoS 2) and discards stored inbound
// PUBLISHes, and the broker redelivers every reading ingest has not
// acknowledged, since the session is persistent. Ingest subscribes at QoS 1
// only, so the broker never sends it QoS 2. The outbound side stays, for
// the dead letters ingest publishes.
//
// This store is also what keeps memory bounded: paho deletes an inbound
// entry when it sends the PUBACK, and ingest sends its PUBACKs itself
// (chunk.ack), so with paho's own store every message's packet, payload
// included, would stay until overwritten by a later one with the same id
// or until the next reconnect.
type outboundStore struct{ *mqtt.MemoryStore }

func newOutboundStore() outboundStore { return outboundStore{mqtt.NewMemoryStore()} }

func (s outboundStore) Put(key string, p packets.ControlPacket) {
	if !strings.HasPrefix(key, inboundPrefix) {
		s.MemoryStore.Put(key, p)
	}
}

func (s outboundStore) Del(key string) {
	if !strings.HasPrefix(key, inboundPrefix) {
		s.MemoryStore.Del(key)
	}
}
