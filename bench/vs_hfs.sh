#!/usr/bin/env bash
# The gateway and HFS (the Helios FHIR Server, the reference point of issues #2 and #3) measured
# in the same minutes, alternating, so that the ratio does not depend on how fast this VM happens
# to be (its speed drifts by up to 1.5x from hour to hour; docs/BENCHMARKS.md).
#
#   bench/vs_hfs.sh PATH/TO/fhir-gateway PATH/TO/hfs [OUT_DIR]
#
# Builds nothing. HFS as the issues measured it:
#   cargo install helios-hfs --version 0.2.7 --no-default-features --features R4,sqlite
# (SQLite, its defaults: no fsync per commit; no authorization, so no token is sent to it).
# The gateway runs on its embedded default (every write durable before the answer) and gets a
# development-issuer token, as in bench/run.sh.
#
# Each round starts each server afresh (new data directory, the order alternating from round to
# round) and runs the scenarios on it, each after a $WARMUP warm-up and once the server is idle:
#   create-Patient   POST Patient-example.json (or $PATIENT_BODY)
#   w1               issue #3 W1 as the Blaze load test shapes it (bench/w1.lua): a transaction
#                    of a small Patient + an Observation linked by urn:uuid
#   transaction      the same shape with Patient-example.json (or $PATIENT_BODY) and
#                    Observation-example.json
#   read-Patient     GET Patient/id, random among $PRELOAD created before
# Prints one markdown row per round and scenario (requests/s, p99, server CPU in cores, the
# gateway-to-HFS ratio) and the medians; every response must be a success, else FAIL (exit 1).
#
# Environment (all optional): ROUNDS=3 DURATION=10s WARMUP=3s CONNECTIONS=32 THREADS=2
#   PRELOAD=2000 SCENARIOS="create-Patient w1 transaction read-Patient" PATIENT_BODY=FILE.json
#   (the Patient posted by all three scenarios; the transaction's Observation is always
#   Observation-example.json)
# Needs: wrk, curl, python3; ../shared/corpora/fhir-r4-examples beside the checkout.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 PATH/TO/fhir-gateway PATH/TO/hfs [OUT_DIR]" >&2; exit 2; }
GATEWAY_BIN=$(realpath "$1")
HFS_BIN=$(realpath "$2")
for bin in "$GATEWAY_BIN" "$HFS_BIN"; do
  [ -x "$bin" ] || { echo "error: $bin is not an executable" >&2; exit 2; }
done
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
CORPORA="$BENCH_DIR/../../shared/corpora/fhir-r4-examples"
PATIENT_BODY=${PATIENT_BODY:-$CORPORA/Patient/Patient-example.json}
OBSERVATION_BODY="$CORPORA/Observation/Observation-example.json"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PRELOAD=${PRELOAD:-2000}
SCENARIOS=${SCENARIOS:-create-Patient w1 transaction read-Patient}
OUT=$(realpath "${3:-$(mktemp -d -t fhir-gateway-vs-hfs.XXXXXX)}")
mkdir -p "$OUT"
CLK_TCK=$(getconf CLK_TCK)
export BENCH_DIR

SERVER_PID=
DATA=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
  [ -n "$DATA" ] && rm -rf "$DATA"
  DATA=
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# The VM's effective speed drifts: compare this fixed piece of CPU work between runs first.
cpu_gauge() { python3 "$BENCH_DIR/cpu_gauge.py"; }

# The "transaction" body: W1's shape with the example resources.
TRANSACTION_BODY="$OUT/transaction.json"
python3 "$BENCH_DIR/w1_bundle.py" "$PATIENT_BODY" "$OBSERVATION_BODY" "$TRANSACTION_BODY"

start_server() { # gateway | hfs
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  DATA=$(mktemp -d -t fhir-gateway-vs-hfs-data.XXXXXX)
  BASE="http://127.0.0.1:$port"
  case $1 in
    gateway)
      "$GATEWAY_BIN" serve --listen "127.0.0.1:$port" --data-dir "$DATA" >>"$OUT/gateway.log" 2>&1 &
      SERVER_PID=$!; HEALTH="$BASE/healthz"; export BASE_PATH=/fhir ;;
    hfs)
      (cd "$DATA" && exec "$HFS_BIN" --host 127.0.0.1 --port "$port" --database-url "$DATA/hfs.db" --data-dir "$DATA" --log-level warn >>"$OUT/hfs.log" 2>&1) &
      SERVER_PID=$!; HEALTH="$BASE/metadata"; export BASE_PATH= ;;
  esac
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$HEALTH" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "error: $1 exited; see $OUT/$1.log" >&2; exit 1; }
    sleep 0.1
  done
  curl -fsS -o /dev/null "$HEALTH" || { echo "error: $1 did not come up" >&2; exit 1; }
  BENCH_TOKEN=
  [ "$1" = gateway ] && BENCH_TOKEN=$("$GATEWAY_BIN" token --data-dir "$DATA" --aud "$BASE/fhir" --minutes 600)
  export BENCH_TOKEN
}

server_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }

# Until the server used < 0.05 cores over a second (at most 600 s): background work done.
wait_idle() {
  local start=$SECONDS before
  while [ $((SECONDS - start)) -lt 600 ]; do
    before=$(server_ticks); sleep 1
    [ $(( $(server_ticks) - before )) -lt $((CLK_TCK / 20 + 1)) ] && return 0
  done
}

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }

measure() { # server scenario round
  local server=$1 scenario=$2 round=$3 script=create.lua label="$3-$1-$2"
  case $scenario in
    create-Patient) export RESOURCE_TYPE=Patient BODY_FILE=$PATIENT_BODY ;;
    w1) script=w1.lua ;;
    transaction) export RESOURCE_TYPE= BODY_FILE=$TRANSACTION_BODY ;;
    read-Patient)
      export IDS_FILE="$OUT/ids-$label.txt"; script=read.lua
      python3 "$BENCH_DIR/preload.py" "$BASE" Patient "$PATIENT_BODY" "$PRELOAD" "$IDS_FILE" 8 ;;
    *) echo "error: unknown scenario $scenario" >&2; exit 2 ;;
  esac
  wait_idle
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" --timeout 5s -s "$BENCH_DIR/$script" "$BASE" >"$OUT/$label-warmup.txt" 2>&1 || true
  local warmup before after result
  warmup=$(grep '^RESULT ' "$OUT/$label-warmup.txt" || echo "RESULT status_errors=-1 timeouts=0")
  before=$(server_ticks)
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 5s --latency -s "$BENCH_DIR/$script" "$BASE" >"$OUT/$label.txt" 2>&1 || true
  after=$(server_ticks)
  result=$(grep '^RESULT ' "$OUT/$label.txt" || echo "RESULT requests=0 duration_us=1 rps=0 p99_us=0 status_errors=-1 timeouts=0")
  local errors=$(( $(field "$result" status_errors) + $(field "$result" timeouts) + $(field "$warmup" status_errors) + $(field "$warmup" timeouts) ))
  local cores
  cores=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" -v us="$(field "$result" duration_us)" 'BEGIN { printf "%.2f", t / hz / (us / 1e6) }')
  echo "$round $scenario $server $(field "$result" rps) $(field "$result" p99_us) $cores $errors" >>"$OUT/raw.txt"
  echo "   round $round $server $scenario: $(field "$result" rps) req/s, p99 $(field "$result" p99_us) us, $cores cores, $errors errors" >&2
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo); kernel $(uname -r)"
  echo "gateway: $GATEWAY_BIN; hfs: $HFS_BIN ($("$HFS_BIN" --version 2>/dev/null || echo '?'))"
  echo "rounds: $ROUNDS; $CONNECTIONS connections, $DURATION after a $WARMUP warm-up; Patient: $PATIENT_BODY ($(wc -c <"$PATIENT_BODY") bytes)"
  echo "cpu gauge before: $(cpu_gauge)"
} | tee "$OUT/machine.txt" >&2
: >"$OUT/raw.txt"
for round in $(seq 1 "$ROUNDS"); do
  order="gateway hfs"
  [ $((round % 2)) = 0 ] && order="hfs gateway"
  for server in $order; do
    start_server "$server"
    for scenario in $SCENARIOS; do
      measure "$server" "$scenario" "$round"
    done
    stop_server
  done
done
echo "cpu gauge after: $(cpu_gauge)" | tee -a "$OUT/machine.txt" >&2

python3 - "$OUT/raw.txt" <<'PY' | tee "$OUT/results.md"
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
runs = {}
for round_, scenario, server, rps, p99, cores, errors in rows:
    runs[(int(round_), scenario, server)] = (float(rps), int(p99) / 1000, float(cores), int(errors))
print("| round | scenario | gateway req/s | HFS req/s | gateway / HFS | gateway p99 ms | HFS p99 ms | gateway CPU (cores) | HFS CPU (cores) |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
ratios, failed = {}, False
for (round_, scenario, server) in sorted(runs):
    if server != "gateway" or (round_, scenario, "hfs") not in runs:
        continue
    ours, theirs = runs[(round_, scenario, "gateway")], runs[(round_, scenario, "hfs")]
    ratio = ours[0] / theirs[0] if theirs[0] else float("nan")
    ratios.setdefault(scenario, []).append((ours[0], theirs[0], ratio))
    mark = ""
    for name, run in (("gateway", ours), ("HFS", theirs)):
        if run[3] != 0:
            mark += f" **FAIL: {name} {run[3]} errors**"
            failed = True
    print(f"| {round_} | {scenario}{mark} | {ours[0]:.0f} | {theirs[0]:.0f} | {ratio:.2f} | {ours[1]:.1f} | {theirs[1]:.1f} | {ours[2]:.2f} | {theirs[2]:.2f} |")
print()
print("| scenario | median gateway req/s | median HFS req/s | median ratio | lowest ratio |")
print("|---|---:|---:|---:|---:|")
for scenario, values in ratios.items():
    print(f"| {scenario} | {statistics.median(v[0] for v in values):.0f} | {statistics.median(v[1] for v in values):.0f} | "
          f"{statistics.median(v[2] for v in values):.2f} | {min(v[2] for v in values):.2f} |")
sys.exit(1 if failed else 0)
PY
