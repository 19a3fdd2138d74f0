// Command infrawatch runs the infrawatch backend (serve), a simulated fleet
// (simulate) and the load tool (bench). It only parses flags and wires the
// packages together; the logic lives in the packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `infrawatch: live monitoring of roads, transport and network assets

usage:
  infrawatch serve    [--config FILE]
  infrawatch simulate [--devices N] [--rate R] [--broker URL] [--api URL --token T] [--faults] [--seed S] [--speedup N --start -24h]
  infrawatch bench    [--self] [--devices N] [--rate R] [--duration D] [--qos 0|1] [--ramp] [--json FILE]
  infrawatch version
`

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "infrawatch:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "serve":
		return cmdServe(ctx, args[1:], stderr)
	case "simulate":
		return cmdSimulate(ctx, args[1:], stderr)
	case "bench":
		return cmdBench(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "infrawatch", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
