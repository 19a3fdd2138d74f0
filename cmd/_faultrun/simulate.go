package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/infrawatch/infrawatch/configs"
	"github.com/infrawatch/infrawatch/simulators"
)

func cmdSimulate(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o simulators.Options
	fs.IntVar(&o.Devices, "devices", 0, "number of devices (0 keeps the fleet file's counts)")
	fs.Float64Var(&o.Rate, "rate", 0, "total readings per second (0 keeps each type's interval)")
	fs.StringVar(&o.BrokerURL, "broker", simulators.DefaultBrokerURL, "MQTT broker URL")
	fs.StringVar(&o.APIURL, "api", "", "infrawatch API URL to provision the fleet through (e.g. http://127.0.0.1:8080)")
	fs.StringVar(&o.Token, "token", os.Getenv("INFRAWATCH_ADMIN_TOKEN"), "admin API token (default $INFRAWATCH_ADMIN_TOKEN)")
	fs.BoolVar(&o.Faults, "faults", false, "inject field faults: spikes, stuck sensors, dropouts, offline devices, malformed payloads")
	fs.Int64Var(&o.Seed, "seed", 1, "random seed; the same seed gives the same readings")
	fs.StringVar(&o.FleetFile, "fleet", "", "fleet file (default: the embedded configs/fleet.yaml)")
	qos0 := fs.Bool("qos0", false, "publish telemetry at QoS 0 instead of 1")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("simulate: unexpected argument %q", fs.Arg(0))
	}
	if o.FleetFile == "" {
		o.FleetYAML = configs.Fleet()
	}
	o.AtMostOnce = *qos0
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := o.Validate(); err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	return simulators.Run(ctx, o)
}
