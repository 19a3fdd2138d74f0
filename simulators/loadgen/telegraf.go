package loadgen

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/infrawatch/infrawatch/internal/testenv"
)

// TelegrafVersion is the Telegraf the comparison is made with; `make
// telegraf` builds it into .tools/bin with only the plugins the bench uses.
const TelegrafVersion = "v1.37.2"

// TelegrafCountField is countField as Telegraf stores it: its json parser
// flattens the reading's nested "values" object into values_<name> fields.
const TelegrafCountField = "values_" + countField

//go:embed telegraf.conf.tmpl
var telegrafConf string

var telegrafTmpl = template.Must(template.New("telegraf.conf").Parse(telegrafConf))

// TelegrafPath returns <repo>/.tools/bin/telegraf, or an error that says
// how to build it.
func TelegrafPath() (string, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, ".tools", "bin", "telegraf")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("telegraf not found at %s: run `make telegraf` (builds Telegraf %s with mqtt_consumer, influxdb_v2 and the json parser)", p, TelegrafVersion)
	}
	return p, nil
}

// startTelegraf creates the database (Telegraf's influxdb_v2 output does
// not), starts Telegraf consuming s.BrokerURL and writing to s.InfluxURL,
// and waits until a warm-up reading went all the way into InfluxDB, which
// proves the subscription, the parsing and the write.
func (s *System) startTelegraf(ctx context.Context, bin string) error {
	if bin == "" {
		var err error
		if bin, err = TelegrafPath(); err != nil {
			return err
		}
	}
	if err := createDatabase(ctx, s.InfluxURL, s.DB); err != nil {
		return err
	}
	var conf strings.Builder
	if err := telegrafTmpl.Execute(&conf, map[string]string{"Broker": s.BrokerURL, "InfluxURL": s.InfluxURL,
		"Bucket": s.DB, "Measurement": DeviceType}); err != nil {
		return fmt.Errorf("render telegraf config: %w", err)
	}
	confPath := filepath.Join(s.Dir, "telegraf.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o644); err != nil {
		return fmt.Errorf("write telegraf config: %w", err)
	}
	c, err := startChild("telegraf", []string{bin, "--config", confPath}, nil, filepath.Join(s.Dir, "telegraf.log"))
	if err != nil {
		return err
	}
	s.telegraf, s.TelegrafPID = c, c.pid()
	if err := s.warmUp(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("telegraf: %w\n%s", err, c.logTail(2000))
	}
	return nil
}

// warmUp publishes one reading of device "warmup-0" until it is counted
// in InfluxDB (published again every few seconds: Telegraf may not have
// subscribed yet when the first goes out, and a clean broker drops it).
func (s *System) warmUp(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(s.BrokerURL).SetClientID("bench-warmup").
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second))
	if tok := client.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return fmt.Errorf("warm-up: connect to %s: %v", s.BrokerURL, tok.Error())
	}
	defer client.Disconnect(100)
	o := s.Options().withDefaults()
	c := &conn{id: "warmup-0", topic: "devices/warmup-0/telemetry"}
	var lastPublish time.Time
	for {
		if time.Since(lastPublish) > 3*time.Second {
			payload, _ := c.reading(time.Now(), 0)
			if tok := client.Publish(c.topic, 1, false, payload); tok.WaitTimeout(5*time.Second) && tok.Error() != nil {
				return fmt.Errorf("warm-up: publish: %w", tok.Error())
			}
			lastPublish = time.Now()
		}
		n, err := countStored(ctx, o, "warmup-", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
		if err == nil && n > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("no reading stored")
			}
			return fmt.Errorf("warm-up reading through Telegraf into InfluxDB: %w (%v)", ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
