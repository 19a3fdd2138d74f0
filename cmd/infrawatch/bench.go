package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/infrawatch/infrawatch/simulators/loadgen"
)

const benchUsage = `usage: infrawatch bench [--self | --api URL --token T --broker URL --influx URL --db NAME]
                       [--devices N] [--rate R] [--duration D] [--qos 0|1] [--ramp] [--json FILE]

Publishes readings at a fixed rate and reports how many were acknowledged and
stored, throughput, lag, and CPU and memory per process. With --self (the
default when no --api is given) it starts its own influxd and infrawatch serve
on free loopback ports. --ramp steps the rate up until a step loses readings or
falls behind, and reports the highest zero-loss rate.
`

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage); fs.PrintDefaults() }
	var o loadgen.Options
	fs.IntVar(&o.Devices, "devices", loadgen.DefaultDevices, "devices, each on its own MQTT connection")
	conns := fs.Int("conns", 0, "MQTT connections; each is one device, so this is the same as --devices")
	fs.Float64Var(&o.Rate, "rate", loadgen.DefaultRate, "total readings per second offered")
	fs.DurationVar(&o.Duration, "duration", loadgen.DefaultDuration, "publishing time (per step with --ramp: --step-duration)")
	qos := fs.Int("qos", loadgen.DefaultQoS, "MQTT QoS of the readings, 0 or 1")
	self := fs.Bool("self", false, "start a private influxd and infrawatch serve (the default without --api)")
	fs.StringVar(&o.APIURL, "api", "", "infrawatch API URL of a running system, e.g. http://127.0.0.1:8080")
	fs.StringVar(&o.Token, "token", os.Getenv("INFRAWATCH_ADMIN_TOKEN"), "admin API token (default $INFRAWATCH_ADMIN_TOKEN)")
	fs.StringVar(&o.BrokerURL, "broker", "tcp://127.0.0.1:1883", "MQTT broker of a running system")
	fs.StringVar(&o.InfluxURL, "influx", "http://127.0.0.1:8086", "InfluxDB of a running system")
	fs.StringVar(&o.DB, "db", loadgen.DefaultDB, "InfluxDB database or bucket infrawatch writes to")
	fs.StringVar(&o.InfluxToken, "influx-token", "", "InfluxDB token (2.x) or user:password (1.8)")
	fs.StringVar(&o.InfluxOrg, "influx-org", "", "InfluxDB organisation (2.x)")
	pids := fs.String("pids", "", "processes of a running system to measure, e.g. infrawatch=123,influxd=456")
	ramp := fs.Bool("ramp", false, "step the rate up and report the highest zero-loss rate")
	steps := fs.String("steps", "", "ramp rates, comma-separated (default 1000,2000,3000,5000,7500,10000,15000,...,100000)")
	stepDur := fs.Duration("step-duration", loadgen.DefaultStepDuration, "publishing time of each ramp step")
	var childEnv []string
	fs.Func("env", "with --self: an INFRAWATCH_<SECTION>_<KEY>=value setting for the serve child (repeatable), e.g. INFRAWATCH_INGEST_WORKERS=4", func(v string) error {
		if !strings.HasPrefix(v, "INFRAWATCH_") || !strings.Contains(v, "=") {
			return errors.New("want INFRAWATCH_<SECTION>_<KEY>=value")
		}
		childEnv = append(childEnv, v)
		return nil
	})
	jsonPath := fs.String("json", "", "also write the results as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	if *qos != 0 && *qos != 1 {
		return fmt.Errorf("bench: --qos %d: want 0 or 1", *qos)
	}
	o.QoS = byte(*qos)
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["conns"] {
		if set["devices"] && *conns != o.Devices {
			return errors.New("bench: --conns and --devices differ: each connection is one device (the broker lets a device publish only its own topic)")
		}
		o.Devices = *conns
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	if len(childEnv) > 0 && !(*self || o.APIURL == "") {
		return errors.New("bench: --env sets up the --self system; a running system has its own settings")
	}
	if *self || o.APIURL == "" {
		if set["api"] || set["broker"] || set["influx"] {
			return errors.New("bench: --self starts its own system; drop --api, --broker and --influx")
		}
		bin, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench: find own binary: %w", err)
		}
		start := time.Now()
		sys, err := loadgen.StartSystem(ctx, loadgen.SystemOptions{Binary: bin, DB: o.DB, Env: childEnv})
		if err != nil {
			return fmt.Errorf("bench: start system: %w", err)
		}
		defer sys.Close()
		o.Logger.Info("bench system ready", "api", sys.APIURL, "broker", sys.BrokerURL, "influx", sys.InfluxURL,
			"infrawatch_pid", sys.ServePID, "influxd_pid", sys.InfluxPID, "took", time.Since(start).Round(time.Millisecond))
		so := sys.Options()
		o.APIURL, o.Token, o.BrokerURL, o.InfluxURL, o.DB, o.Procs = so.APIURL, so.Token, so.BrokerURL, so.InfluxURL, so.DB, so.Procs
	} else if *pids != "" {
		m, err := parsePIDs(*pids)
		if err != nil {
			return err
		}
		o.Procs = m
	}

	var result any
	var lossErr error
	if *ramp {
		ro := loadgen.RampOptions{Run: o, StepDuration: *stepDur, OnStep: func(s loadgen.Step) {
			v := "pass"
			if !s.Pass {
				v = "FAIL: " + s.Reason
			}
			o.Logger.Info("ramp step", "offered", s.OfferedRate, "stored_rate", int(s.StoredRate), "lost", s.Lost, "verdict", v)
		}}
		if *steps != "" {
			for _, f := range strings.Split(*steps, ",") {
				v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
				if err != nil {
					return fmt.Errorf("bench: --steps %q: %w", *steps, err)
				}
				ro.Steps = append(ro.Steps, v)
			}
		}
		rr, err := loadgen.Ramp(ctx, ro)
		if rr != nil && len(rr.Steps) > 0 {
			_ = rr.WriteTable(stdout)
		}
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		result = rr
	} else {
		r, err := loadgen.Run(ctx, o)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if err := r.WriteTable(stdout); err != nil {
			return err
		}
		result = r
		if !r.ZeroLoss() {
			lossErr = fmt.Errorf("bench: readings were lost: %d acknowledged not stored, %d publish errors, %.0f rejected, %.0f dropped",
				r.Lost, r.PublishErrors, r.Rejected, r.Dropped)
		}
	}
	if *jsonPath != "" {
		b, err := json.MarshalIndent(result, "", "  ")
		if err != nil {
			return fmt.Errorf("bench: encode results: %w", err)
		}
		if err := os.WriteFile(*jsonPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("bench: write %s: %w", *jsonPath, err)
		}
	}
	return lossErr
}

func parsePIDs(s string) (map[string]int, error) {
	m := map[string]int{}
	for _, kv := range strings.Split(s, ",") {
		name, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		pid, err := strconv.Atoi(v)
		if !ok || name == "" || err != nil || pid <= 0 {
			return nil, fmt.Errorf("bench: --pids %q: want name=pid,...", s)
		}
		m[name] = pid
	}
	return m, nil
}
