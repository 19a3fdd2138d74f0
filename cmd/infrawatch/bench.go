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
                       [--mode embedded|mosquitto|telegraf|all] [--devices N] [--rate R]
                       [--duration D] [--qos 0|1] [--ramp] [--repeat N] [--ws-clients N]
                       [--ws-subscribe all|site] [--publisher raw|paho]
                       [--registry-devices N[,N...]] [--json FILE]

Publishes readings at a fixed rate and reports how many were acknowledged and
stored, throughput, lag, and CPU and memory per process. With --self (the
default when no --api is given) it starts its own influxd and infrawatch serve
on free loopback ports. --ramp steps the rate up until a step loses readings or
falls behind, and reports the highest zero-loss rate.

--mode runs the same workload through infrawatch with its embedded broker
(embedded, the default), infrawatch behind a private Mosquitto (mosquitto),
Telegraf behind a private Mosquitto (telegraf; build it with make telegraf),
or all three one after the other with a side-by-side table (all). --repeat N
runs all three N times back to back and prints each run's CPU ratios and their
medians (CPU time on a shared VM drifts between minutes: one run is one draw).
--ws-clients N runs twice, without and with N websocket clients subscribed
in batch mode (as the dashboard page is), and reports publish → websocket
latency. --ws-subscribe says what each client watches: all readings (all, the
worst case) or one site's devices (site: 10 devices per client).
--publisher picks the load generator's MQTT client: raw (default: packets
encoded once and written straight to each connection, so that on a small
machine the system under test, not the load generator, sets the limit) or paho.
--registry-devices provisions devices up to each size, one reading each,
and reports infrawatch's memory per device (no publishing run).
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
	repeat := fs.Int("repeat", 1, "with --mode all at one rate: run the three systems this many times, back to back, and print each run's CPU ratios and their medians")
	var childEnv []string
	fs.Func("env", "with --self: an INFRAWATCH_<SECTION>_<KEY>=value setting, or the Go runtime's GOGC= or GOMEMLIMIT=, for the serve child (repeatable), e.g. INFRAWATCH_INGEST_WORKERS=4", func(v string) error {
		name, _, ok := strings.Cut(v, "=")
		if !ok || (!strings.HasPrefix(name, "INFRAWATCH_") && name != "GOGC" && name != "GOMEMLIMIT") {
			return errors.New("want INFRAWATCH_<SECTION>_<KEY>=value, GOGC=value or GOMEMLIMIT=value")
		}
		childEnv = append(childEnv, v)
		return nil
	})
	jsonPath := fs.String("json", "", "also write the results as JSON to this file")
	modeFlag := fs.String("mode", string(loadgen.ModeEmbedded), "embedded, mosquitto, telegraf or all (with --self)")
	fs.IntVar(&o.WSClients, "ws-clients", 0, "websocket clients on /api/v1/stream during a second run (0: none)")
	fs.StringVar(&o.WSSubscribe, "ws-subscribe", loadgen.WSAll, "what each websocket client watches: all (every device) or site (10 devices)")
	fs.BoolVar(&o.NoRules, "no-rules", false, "do not create the bench's three alert rules (threshold, rate, absence on every bench device)")
	fs.StringVar(&o.Publisher, "publisher", loadgen.PublisherRaw, "load generator's MQTT client: raw (lean, one write per connection and tick) or paho")
	registry := fs.String("registry-devices", "", "registry sizes to read memory at, e.g. 10000,30000 (with --self)")
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

	modes := loadgen.Modes
	if *modeFlag != "all" {
		m, err := loadgen.ParseMode(*modeFlag)
		if err != nil {
			return fmt.Errorf("bench: --%w, or all", err)
		}
		modes = []loadgen.Mode{m}
	}
	selfRun := *self || o.APIURL == ""
	if len(childEnv) > 0 && !selfRun {
		return errors.New("bench: --env sets up the --self system; a running system has its own settings")
	}
	if !selfRun && (set["mode"] || *registry != "") {
		return errors.New("bench: --mode and --registry-devices start their own systems: use them with --self")
	}
	if o.WSClients > 0 && len(modes) == 1 && modes[0] == loadgen.ModeTelegraf {
		return errors.New("bench: --ws-clients measures infrawatch's stream; Telegraf has none")
	}
	if selfRun && (set["api"] || set["broker"] || set["influx"]) {
		return errors.New("bench: --self starts its own system; drop --api, --broker and --influx")
	}
	if *repeat < 1 || (*repeat > 1 && (len(modes) < 2 || *ramp)) {
		return errors.New("bench: --repeat N (N ≥ 1) repeats --mode all at one rate; not with --ramp or one mode")
	}
	if *registry != "" {
		return benchRegistry(ctx, o, *registry, childEnv, stdout, *jsonPath)
	}
	if !selfRun {
		if *pids != "" {
			m, err := parsePIDs(*pids)
			if err != nil {
				return err
			}
			o.Procs = m
		}
		result, lossErr, err := benchOne(ctx, o, *ramp, *steps, *stepDur, stdout)
		if err != nil {
			return err
		}
		return finishBench(result, lossErr, *jsonPath)
	}

	var cmps []loadgen.Comparison
	var results []any
	var lossErrs []error
	for run := range *repeat {
		if *repeat > 1 {
			fmt.Fprintf(stdout, "\n##### run %d of %d #####\n", run+1, *repeat)
		}
		cmp, err := benchModes(ctx, o, modes, childEnv, *ramp, *steps, *stepDur, stdout, &results, &lossErrs)
		if err != nil {
			return err
		}
		cmps = append(cmps, cmp)
		if len(modes) > 1 {
			fmt.Fprintf(stdout, "\n=== side by side: the same workload through %d systems ===\n", len(modes))
			if err := cmp.WriteTable(stdout); err != nil {
				return err
			}
		}
	}
	if len(modes) == 1 {
		return finishBench(results[0], errors.Join(lossErrs...), *jsonPath)
	}
	loadgen.WriteRepeatSummary(stdout, cmps)
	var out any = map[string]any{"comparison": cmps[0], "results": results}
	if len(cmps) > 1 {
		ratios := make([]loadgen.CPURatios, len(cmps))
		for i := range cmps {
			ratios[i] = cmps[i].CPURatios()
		}
		out = map[string]any{"comparisons": cmps, "cpu_ratios": ratios, "results": results}
	}
	return finishBench(out, errors.Join(lossErrs...), *jsonPath)
}

// benchModes runs the same workload through each of modes, one after the
// other, and returns them side by side; each system's result and loss
// are appended to results and lossErrs.
func benchModes(ctx context.Context, o loadgen.Options, modes []loadgen.Mode, childEnv []string, ramp bool, steps string,
	stepDur time.Duration, stdout io.Writer, results *[]any, lossErrs *[]error) (loadgen.Comparison, error) {
	var cmp loadgen.Comparison
	for _, mode := range modes {
		so := o
		if mode == loadgen.ModeTelegraf {
			so.WSClients = 0
		}
		result, lossErr, err := benchSystem(ctx, so, mode, childEnv, ramp, steps, stepDur, stdout)
		if err != nil {
			return cmp, err
		}
		*results = append(*results, result)
		if lossErr != nil {
			*lossErrs = append(*lossErrs, fmt.Errorf("%s: %w", mode, lossErr))
		}
		sr := loadgen.SystemRun{Mode: mode}
		switch r := result.(type) {
		case *loadgen.Result:
			sr.Run = r
		case *loadgen.RampResult:
			sr.Ramp = r
		case []*loadgen.Result:
			sr.Run = r[0] // the run without websocket clients
		}
		cmp.Systems = append(cmp.Systems, sr)
	}
	return cmp, nil
}

// serveBinaryEnv names another infrawatch executable for the --self
// system's serve, to compare builds with one load generator and workload.
const serveBinaryEnv = "IW_BENCH_SERVE_BINARY"

// serveBinary is what --self runs as `serve`: this executable, or
// $IW_BENCH_SERVE_BINARY.
func serveBinary() (string, error) {
	if b := os.Getenv(serveBinaryEnv); b != "" {
		return b, nil
	}
	bin, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("bench: find own binary: %w", err)
	}
	return bin, nil
}

// benchSystem starts a private system of mode, runs the bench against it
// and stops it.
func benchSystem(ctx context.Context, o loadgen.Options, mode loadgen.Mode, childEnv []string, ramp bool, steps string,
	stepDur time.Duration, stdout io.Writer) (any, error, error) {
	bin, err := serveBinary()
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	sys, err := loadgen.StartSystem(ctx, loadgen.SystemOptions{Mode: mode, Binary: bin, DB: o.DB, Env: childEnv})
	if err != nil {
		return nil, nil, fmt.Errorf("bench: start %s system: %w", mode, err)
	}
	defer sys.Close()
	o.Logger.Info("bench system ready", "mode", mode, "api", sys.APIURL, "broker", sys.BrokerURL, "influx", sys.InfluxURL,
		"procs", sys.Procs(), "took", time.Since(start).Round(time.Millisecond))
	so := sys.Options()
	o.APIURL, o.Token, o.BrokerURL, o.InfluxURL, o.DB, o.Procs = so.APIURL, so.Token, so.BrokerURL, so.InfluxURL, so.DB, so.Procs
	o.Direct, o.CountField = so.Direct, so.CountField
	fmt.Fprintf(stdout, "\n=== %s ===\n", mode)
	return benchOne(ctx, o, ramp, steps, stepDur, stdout)
}

// benchOne runs a ramp, a run, or (with websocket clients) a run without
// and one with them, against the system o points at, and prints it. The
// second error is the loss of readings (the result is still good).
func benchOne(ctx context.Context, o loadgen.Options, ramp bool, steps string, stepDur time.Duration, stdout io.Writer) (any, error, error) {
	var result any
	var lossErr error
	if ramp {
		ro := loadgen.RampOptions{Run: o, StepDuration: stepDur, OnStep: func(s loadgen.Step) {
			v := "pass"
			if !s.Pass {
				v = "FAIL: " + s.Reason
			}
			o.Logger.Info("ramp step", "offered", s.OfferedRate, "stored_rate", int(s.StoredRate), "lost", s.Lost, "verdict", v)
		}}
		if steps != "" {
			for _, f := range strings.Split(steps, ",") {
				v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
				if err != nil {
					return nil, nil, fmt.Errorf("bench: --steps %q: %w", steps, err)
				}
				ro.Steps = append(ro.Steps, v)
			}
		}
		rr, err := loadgen.Ramp(ctx, ro)
		if rr != nil && len(rr.Steps) > 0 {
			_ = rr.WriteTable(stdout)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("bench: %w", err)
		}
		return rr, nil, nil
	}
	// With websocket clients: first the same run without them, for the
	// ingest rate to compare with.
	passes := []int{o.WSClients}
	if o.WSClients > 0 {
		passes = []int{0, o.WSClients}
	}
	var runs []*loadgen.Result
	for _, n := range passes {
		ro := o
		ro.WSClients = n
		if len(passes) > 1 {
			fmt.Fprintf(stdout, "--- %d websocket clients ---\n", n)
		}
		r, err := loadgen.Run(ctx, ro)
		if err != nil {
			return nil, nil, fmt.Errorf("bench: %w", err)
		}
		if err := r.WriteTable(stdout); err != nil {
			return nil, nil, err
		}
		runs = append(runs, r)
		if !r.ZeroLoss() {
			lossErr = errors.Join(lossErr, fmt.Errorf("bench: readings were lost: %d acknowledged not stored, %d publish errors, %.0f rejected, %.0f dropped",
				r.Lost, r.PublishErrors, r.Rejected, r.Dropped))
		}
	}
	if len(runs) == 1 {
		return runs[0], lossErr, nil
	}
	a, b := runs[0], runs[1]
	fmt.Fprintf(stdout, "ingest without / with %d websocket clients: %.0f / %.0f stored/s (offered %.0f), lag p99 %.0f / %.0f ms, infrawatch CPU %.3f / %.3f s per 1k stored\n",
		o.WSClients, a.StoredRate, b.StoredRate, o.Rate, a.LagP99Ms, b.LagP99Ms,
		a.Procs["infrawatch"].CPUPer1000, b.Procs["infrawatch"].CPUPer1000)
	result = runs
	return result, lossErr, nil
}

// finishBench writes the JSON file when asked and returns the loss error.
func finishBench(result any, lossErr error, jsonPath string) error {
	if jsonPath != "" {
		b, err := json.MarshalIndent(result, "", "  ")
		if err != nil {
			return fmt.Errorf("bench: encode results: %w", err)
		}
		if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("bench: write %s: %w", jsonPath, err)
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

// benchRegistry starts a private system (embedded broker) and reads its
// memory at each registry size of sizes ("10000,30000").
func benchRegistry(ctx context.Context, o loadgen.Options, sizes string, childEnv []string, stdout io.Writer, jsonPath string) error {
	var counts []int
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("bench: --registry-devices %q: want positive sizes, comma-separated", sizes)
		}
		counts = append(counts, n)
	}
	bin, err := serveBinary()
	if err != nil {
		return err
	}
	sys, err := loadgen.StartSystem(ctx, loadgen.SystemOptions{Binary: bin, DB: o.DB, Env: childEnv})
	if err != nil {
		return fmt.Errorf("bench: start system: %w", err)
	}
	defer sys.Close()
	rr, err := loadgen.RegistryMemory(ctx, loadgen.RegistryOptions{APIURL: sys.APIURL, Token: sys.Token,
		BrokerURL: sys.BrokerURL, PID: sys.ServePID, Counts: counts, Logger: o.Logger})
	if rr != nil {
		_ = rr.WriteTable(stdout)
	}
	if err != nil {
		return fmt.Errorf("bench: registry memory: %w", err)
	}
	return finishBench(rr, nil, jsonPath)
}
