package main

import (
	"context"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
)

// inlinePublisher publishes through the embedded broker in-process: alert
// notifications need no TCP round trip to our own broker.
type inlinePublisher struct{ srv *mqtt.Server }

func (p inlinePublisher) Publish(_ context.Context, topic string, qos byte, payload []byte) error {
	if err := p.srv.Publish(topic, payload, false, qos); err != nil {
		return fmt.Errorf("publish %s in-process: %w", topic, err)
	}
	return nil
}

// pahoPublisher publishes alert notifications to an external broker on its
// own connection, so a slow notification never holds up ingest's.
type pahoPublisher struct{ c paho.Client }

func newPahoPublisher(ctx context.Context, url, clientID, user, pass string, timeout time.Duration) (*pahoPublisher, error) {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetUsername(user).SetPassword(pass).SetCleanSession(true).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectTimeout(timeout)
	c := paho.NewClient(o)
	tok := c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("connect alert publisher to %s: %w", url, err)
		}
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, ctx.Err()
	case <-time.After(timeout):
		// SetConnectRetry keeps trying in the background; publishes queue.
	}
	return &pahoPublisher{c: c}, nil
}

func (p *pahoPublisher) Publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	tok := p.c.Publish(topic, qos, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("publish %s: %w", topic, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publish %s: %w", topic, ctx.Err())
	}
}

func (p *pahoPublisher) Close() { p.c.Disconnect(250) }
