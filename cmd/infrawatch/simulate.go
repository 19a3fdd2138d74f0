package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

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
	fs.BoolVar(&o.Faults, "faults", false, "inject field faults: spikes, stuck values, drift, dropouts, devices offline, gateway backhaul loss, clock skew, duplicates, malformed and oversized payloads")
	faultRates := fs.String("fault-rates", "", "per-reading fault probabilities, e.g. spike=0.01,drift=0.001 (implies --faults; kinds: spike stuck drift dropout offline backhaul_loss clock_skew duplicate malformed oversized)")
	fs.IntVar(&o.MaxConnections, "max-connections", simulators.DefaultMaxConnections, "MQTT connections at most; further devices travel through multiplexing gateways")
	fs.IntVar(&o.MuxDevices, "mux-devices", simulators.DefaultMuxDevices, "devices one multiplexing gateway carries at most")
	fs.DurationVar(&o.MuxInterval, "mux-interval", 0, "how often a multiplexing gateway publishes (default 1s)")
	fs.Float64Var(&o.Speedup, "speedup", 0, "run simulated time N times faster (replays a day in minutes); --rate is then the wall-clock rate, else the wall rate is N times the simulated rate")
	start := fs.String("start", "", "simulated time of the first reading: RFC 3339 or relative like -24h (with --speedup, start in the past: ingest accepts readings from the last 7 days up to 5 minutes ahead)")
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
	if *faultRates != "" {
		rates, err := simulators.ParseFaultRates(*faultRates, simulators.FaultRates{})
		if err != nil {
			return fmt.Errorf("simulate: --fault-rates: %w", err)
		}
		o.FaultRates, o.Faults = rates, true
	}
	if *start != "" {
		t, err := simulators.ParseStart(*start, time.Now())
		if err != nil {
			return fmt.Errorf("simulate: --start: %w", err)
		}
		o.Start = t
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := o.Validate(); err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	return simulators.Run(ctx, o)
}
