# infrawatch — `make run` starts a complete local system, `make test` runs every test.
SHELL := /bin/bash
GO ?= go
# The newest Go 1.26 patch release, fetched once through the module proxy:
# the machine's go1.26.8 has standard-library vulnerabilities that
# go1.26.9 and go1.26.10 fix (make vuln). Override with GOTOOLCHAIN=local.
GOTOOLCHAIN ?= go1.26.10
export GOTOOLCHAIN
TOOLS := $(CURDIR)/.tools/bin
INFLUXD := $(TOOLS)/influxd
BIN := $(CURDIR)/bin/infrawatch
PKGS := ./...

.PHONY: all build run test test-short bench bench-compare fuzz vuln vet fmt influxd telegraf deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/infrawatch

# InfluxDB OSS 1.8.3, built from source into a git-ignored project folder
# (later 1.x and 2.x need a Rust-built library and do not build here).
influxd: $(INFLUXD)
$(INFLUXD):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install github.com/influxdata/influxdb/cmd/influxd@v1.8.3

# Telegraf v1.37.2 with just the plugins the side-by-side benchmark uses
# (`infrawatch bench --mode all`).
TELEGRAF := $(TOOLS)/telegraf
telegraf: $(TELEGRAF)
$(TELEGRAF):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install -tags custom,inputs.mqtt_consumer,outputs.influxdb_v2,parsers.json github.com/influxdata/telegraf/cmd/telegraf@v1.37.2

# Starts InfluxDB (data in data/influxdb), `infrawatch serve` with its
# embedded broker, and a simulated fleet; prints the dashboard URL and the
# admin token. Ctrl-C stops all of it.
run: build influxd
	@INFLUXD=$(INFLUXD) BIN=$(BIN) scripts/run-local.sh

test: influxd
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) test -race -count=1 -timeout 25m $(PKGS)

# Every fuzz target of a decoder of outside input, briefly (FUZZTIME each).
# A count of executions, not a duration: with a duration, Go 1.26's fuzz
# coordinator can report a bare "context deadline exceeded" failure at the
# deadline on a busy machine (golang/go#75804, fixed in Go 1.27); a count
# has no deadline to race. A real finding still fails and writes its input
# to testdata/fuzz.
FUZZTIME ?= 30000x
fuzz:
	@set -e; for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs grep -ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/^func //' | sort -u); do \
		pkg=$$(grep -rl --include='*_test.go' "^func $$t(" . | head -1 | xargs dirname); \
		echo "fuzz $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

vuln:
	scripts/govulncheck.sh

test-short:
	$(GO) test -short -count=1 $(PKGS)

bench: build influxd
	$(GO) test -run '^$$' -bench . -benchmem ./ingest/ ./store/ ./devices/ ./alerts/
	$(BIN) bench

# The side-by-side run of the issue: infrawatch (embedded broker), infrawatch
# behind Mosquitto and Telegraf behind Mosquitto, each ramped to its highest
# zero-loss rate. Takes several minutes.
bench-compare: build influxd telegraf
	$(BIN) bench --mode all --ramp

vet:
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin data
