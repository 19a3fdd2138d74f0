package main

import (
	"context"
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/infrawatch/infrawatch/ingest"
)

// localPublisher publishes ingest's dead letters through the embedded
// broker in process.
type localPublisher struct{ srv *mqtt.Server }

func (p localPublisher) Publish(topic string, payload []byte) error {
	if err := p.srv.Publish(topic, payload, false, 1); err != nil {
		return fmt.Errorf("publish %s in process: %w", topic, err)
	}
	return nil
}

// startBroker attaches ingest to the embedded broker in process and starts
// it listening. Device telemetry goes straight from the device's connection
// to ingest (no MQTT round trip to the process itself), and the broker
// sends a device's PUBACK only once ingest has stored or spooled the
// message: a PUBACK means durable, even across kill -9. Status messages
// (including last wills and retained ones) arrive through an in-process
// subscription.
func (s *server) startBroker(ctx context.Context) error {
	for _, f := range []string{ingest.TopicDeviceTelemetry, ingest.TopicGatewayTelemetry} {
		if err := s.broker.Intercept(f, s.ingester.Deliver); err != nil {
			return fmt.Errorf("embedded broker: %w", err)
		}
	}
	if err := s.broker.Subscribe(ingest.TopicDeviceStatus, 1, s.ingester.Deliver); err != nil {
		return fmt.Errorf("embedded broker: %w", err)
	}
	if err := s.broker.Start(ctx); err != nil {
		return fmt.Errorf("start embedded broker on %s: %w", s.cfg.Broker.Listen, err)
	}
	return nil
}
