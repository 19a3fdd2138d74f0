#!/usr/bin/env bash
# Starts a complete local infrawatch: InfluxDB 1.8 (data in data/influxdb),
# `infrawatch serve` with its embedded broker, and a simulated fleet.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

INFLUXD=${INFLUXD:-.tools/bin/influxd}
BIN=${BIN:-bin/infrawatch}
DATA=${INFRAWATCH_DATA:-data}
HTTP=${INFRAWATCH_HTTP_LISTEN:-127.0.0.1:8080}
INFLUX_URL=${INFRAWATCH_INFLUX_URL:-http://127.0.0.1:8086}
DEVICES=${DEVICES:-120}
mkdir -p "$DATA/influxdb"

pids=()
cleanup() {
	trap - INT TERM EXIT
	echo
	echo "stopping..."
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
}
trap cleanup EXIT
# A stop asked for (Ctrl-C, or SIGTERM from a service manager) is not a
# component failing.
trap 'interrupted=1; cleanup' INT TERM

wait_http() { # url what seconds
	for ((i = 0; i < $3 * 10; i++)); do
		if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "$2 did not come up at $1" >&2
	return 1
}

if curl -fsS -o /dev/null "$INFLUX_URL/ping" 2>/dev/null; then
	echo "using the InfluxDB already answering at $INFLUX_URL"
else
	port=${INFLUX_URL##*:}
	cat >"$DATA/influxdb/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:8088"
[meta]
  dir = "$PWD/$DATA/influxdb/meta"
[data]
  dir = "$PWD/$DATA/influxdb/data"
  wal-dir = "$PWD/$DATA/influxdb/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$port"
  flux-enabled = true
  log-enabled = false
[logging]
  level = "warn"
CONF
	# In a session of its own, so that Ctrl-C (SIGINT to the terminal's
	# process group) does not stop InfluxDB while serve still writes its
	# last batches and alert events: cleanup stops it after serve.
	setsid "$INFLUXD" run -config "$DATA/influxdb/influxdb.conf" >"$DATA/influxdb.log" 2>&1 &
	pids+=($!)
	wait_http "$INFLUX_URL/ping" "InfluxDB" 60
	echo "InfluxDB 1.8.3 on $INFLUX_URL (log: $DATA/influxdb.log)"
fi

if [[ -z "${INFRAWATCH_ADMIN_TOKEN:-}" ]]; then
	if [[ ! -s "$DATA/admin.token" ]]; then
		(umask 077 && head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' >"$DATA/admin.token")
	fi
	INFRAWATCH_ADMIN_TOKEN=$(cat "$DATA/admin.token")
fi
export INFRAWATCH_ADMIN_TOKEN
export INFRAWATCH_DEVICES_DB_PATH=${INFRAWATCH_DEVICES_DB_PATH:-$DATA/infrawatch.db}
export INFRAWATCH_INGEST_SPOOL_DIR=${INFRAWATCH_INGEST_SPOOL_DIR:-$DATA/spool}
export INFRAWATCH_INFLUX_URL=$INFLUX_URL

"$BIN" serve ${CONFIG:+--config "$CONFIG"} 2>>"$DATA/infrawatch.log" &
pids+=($!)
wait_http "http://$HTTP/readyz" "infrawatch serve" 60

"$BIN" simulate --devices "$DEVICES" --api "http://$HTTP" --token "$INFRAWATCH_ADMIN_TOKEN" \
	--broker "tcp://${INFRAWATCH_BROKER_LISTEN:-127.0.0.1:1883}" ${FAULTS:+--faults} 2>>"$DATA/simulate.log" &
pids+=($!)

cat <<MSG

  infrawatch is running.
    dashboard:    http://$HTTP/
    admin token:  $INFRAWATCH_ADMIN_TOKEN
    API:          curl -H "Authorization: Bearer \$TOKEN" http://$HTTP/api/v1/state
    InfluxDB:     $INFLUX_URL (database infrawatch)
    logs:         $DATA/infrawatch.log, $DATA/simulate.log
  Ctrl-C stops everything.

MSG
wait -n "${pids[@]}" || true
# On Ctrl-C the children get SIGINT too and may exit before bash runs its
# trap: give the trap a moment before reporting a failure.
sleep 0.5
[[ -n ${interrupted:-} ]] || echo "a component exited; see the logs in $DATA/" >&2
