#!/usr/bin/env bash
# HTTP benchmark of a release build of fhir-gateway with wrk (see docs/BENCHMARKS.md).
#
#   bench/run.sh PATH/TO/fhir-gateway [OUT_DIR]
#
# Builds nothing. Starts `fhir-gateway serve` on a free loopback port with a fresh data
# directory (mktemp -d), then runs, each for $DURATION after a $WARMUP warm-up:
#   create Patient      (POST, Patient-example.json)               1 and 32 connections
#   create Observation  (POST, Observation-example.json, vital signs: body weight)  1 and 32
#   read Patient        (GET by id, random among $PRELOAD preloaded)                1 and 32
#   read Observation    (GET by id, random among $PRELOAD preloaded)                1 and 32
# and prints a markdown table: requests/s, p50, p99, error responses (must be 0, else the
# scenario FAILs and the script exits 1), the gateway's peak RSS (VmHWM) after the scenario,
# how long the gateway kept working after the load stopped (background search indexing), and
# where the CPU went (gateway threads: commit thread, search indexing; wrk; kernel threads;
# everything else on the machine; hypervisor steal). Before each scenario it waits until the
# gateway is idle, so one scenario's background work does not land in the next one.
# Everything (wrk outputs, per-thread CPU, gateway log, ids, results.md) goes to OUT_DIR
# (default: a new directory under $TMPDIR, printed at the start).
#
# Environment (all optional):
#   DURATION=15s WARMUP=3s PRELOAD=2000  THREADS=2 (wrk threads for the 32-connection runs)
#   PREFER=            Prefer header on creates (default none = return=representation)
#   SCENARIOS="create-Patient create-Observation read-Patient read-Observation"
#              (also: w1 = issue #3 W1 as the Blaze load test shapes it, a small Patient + Observation
#              transaction per request, bench/w1.lua; transaction = the same with the official
#              Patient and Observation examples, 3.7 and 1.8 KB)
#   CONNECTIONS="1 32" KEEP_DATA=0 (1 keeps the data directory)
#   On a shared machine: WAIT_QUIET=120 (wait up to 120 s before each scenario until other
#   processes use < NOISE_LIMIT=0.15 cores) and RETRIES=2 (measure a scenario again if other
#   processes or hypervisor steal took more than NOISE_LIMIT cores during it; the table shows
#   the last attempt). machine.txt and results.md also show a CPU gauge (a fixed SHA-256 loop)
#   before and after: the effective speed of a VM drifts, so compare runs only with that in mind.
#   GATEWAY_ARGS=     extra flags for `serve` (e.g. "--audit-durability before-response")
#   FHIR_GATEWAY_LOG   passed through to the gateway (default: its own, info; logs go to OUT_DIR/gateway.log)
# Needs: wrk (apt-get install -y wrk), curl, python3. Reads the example resources from
# ../shared/corpora/fhir-r4-examples beside the checkout.
set -euo pipefail

usage() {
  echo "usage: $0 PATH/TO/fhir-gateway [OUT_DIR]" >&2
  echo "  e.g. cargo build --release && $0 \"\${CARGO_TARGET_DIR:-target}/release/fhir-gateway\"" >&2
  exit 2
}
[ $# -ge 1 ] || usage
BIN=$(realpath "$1")
[ -x "$BIN" ] || { echo "error: $1 is not an executable" >&2; exit 2; }

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
CORPORA="$REPO/../shared/corpora/fhir-r4-examples"
PATIENT_BODY="$CORPORA/Patient/Patient-example.json"
OBSERVATION_BODY="$CORPORA/Observation/Observation-example.json"
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
PRELOAD=${PRELOAD:-2000}
THREADS=${THREADS:-2}
PREFER=${PREFER:-}
SCENARIOS=${SCENARIOS:-create-Patient create-Observation read-Patient read-Observation}
CONNECTIONS=${CONNECTIONS:-1 32}
KEEP_DATA=${KEEP_DATA:-0}
GATEWAY_ARGS=${GATEWAY_ARGS:-}
WAIT_QUIET=${WAIT_QUIET:-0}
NOISE_LIMIT=${NOISE_LIMIT:-0.15}
RETRIES=${RETRIES:-0}
OUT=${2:-$(mktemp -d -t fhir-gateway-bench.XXXXXX)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
# Ids preloaded by an earlier run name resources of another (deleted) data directory.
rm -f "$OUT"/ids-*.txt

missing=0
for tool in wrk curl python3 awk; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is not installed" >&2
    missing=1
  fi
done
if [ "$missing" = 1 ]; then
  echo "install with: apt-get update && apt-get install -y wrk curl python3 gawk" >&2
  exit 2
fi
for file in "$PATIENT_BODY" "$OBSERVATION_BODY"; do
  [ -f "$file" ] || { echo "error: $file is missing (../shared/corpora beside the checkout)" >&2; exit 2; }
done

CLK_TCK=$(getconf CLK_TCK)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
DATA=$(mktemp -d -t fhir-gateway-bench-data.XXXXXX)
GATEWAY_PID=

cleanup() {
  if [ -n "$GATEWAY_PID" ] && kill -0 "$GATEWAY_PID" 2>/dev/null; then
    kill -TERM "$GATEWAY_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$GATEWAY_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$GATEWAY_PID" 2>/dev/null || true
    wait "$GATEWAY_PID" 2>/dev/null || true
  fi
  if [ "$KEEP_DATA" = 1 ]; then
    echo "data directory kept: $DATA" >&2
  else
    rm -rf "$DATA"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The VM's effective speed drifts: compare this fixed piece of CPU work between runs first.
cpu_gauge() { python3 "$BENCH_DIR/cpu_gauge.py"; }

# ---- the machine, for the record
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "filesystem of the data directory: $(df -T "$DATA" | awk 'NR == 2 {print $2 " on " $1}')"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cpu gauge before: $(cpu_gauge)"
  echo "binary: $BIN ($(stat -c %y "$BIN" | cut -d. -f1))"
  echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (working tree modified)')"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "duration: $DURATION per scenario after a $WARMUP warm-up; preload: $PRELOAD per type; prefer: ${PREFER:-(none)}; wait-quiet: ${WAIT_QUIET}s, noise limit $NOISE_LIMIT cores, retries $RETRIES"
} | tee "$OUT/machine.txt" >&2

# ---- start the gateway
# shellcheck disable=SC2086 # GATEWAY_ARGS is split on purpose
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" $GATEWAY_ARGS \
  >"$OUT/gateway.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { echo "error: the gateway exited; see $OUT/gateway.log" >&2; cat "$OUT/gateway.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$BASE/healthz" >/dev/null || { echo "error: the gateway did not come up" >&2; exit 1; }
echo "gateway pid $GATEWAY_PID on $BASE, data $DATA, results in $OUT" >&2
# Every FHIR request carries a development-issuer token (verified per request, as in production).
BENCH_TOKEN=$("$BIN" token --data-dir "$DATA" --aud "$BASE/fhir" --minutes 600)
export BENCH_TOKEN

# ---- CPU accounting helpers (clock ticks)
# "name ticks" per gateway thread name (tokio-runtime-w = Tokio workers and blocking pool).
thread_ticks() {
  for stat in /proc/"$GATEWAY_PID"/task/*/stat; do
    cat "$stat" 2>/dev/null || true
  done | awk '{
      line = $0
      name = substr(line, index(line, "(") + 1)
      name = substr(name, 1, index(name, ")") - 1)
      rest = substr(line, index(line, ") ") + 2)
      split(rest, fields, " ")
      ticks[name] += fields[12] + fields[13]   # utime + stime (fields 14 and 15 of stat)
    } END { for (name in ticks) print name, ticks[name] }'
}
# busy and steal ticks of the whole machine
machine_ticks() {
  awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8; print busy, $9 }' /proc/stat
}
# ticks of kernel threads (children of kthreadd: I/O workers, jbd2, ...): mostly the file
# system working for the gateway's fsyncs during creates, so not counted as noise
kernel_thread_ticks() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk '{
      rest = substr($0, index($0, ") ") + 2); split(rest, f, " ")
      if (f[2] == 2 || $1 == 2) total += f[12] + f[13]
    } END { print total + 0 }'
}
vm_kib() {
  awk -v key="$1:" '$1 == key { print $2 }' "/proc/$GATEWAY_PID/status"
}

# ---- one wrk run; sets RESULT (the RESULT line), WRK_CPU_TICKS
run_wrk() { # label connections script duration
  local label=$1 connections=$2 script=$3 duration=$4 threads=1
  [ "$connections" -gt 1 ] && threads=$THREADS
  local output="$OUT/$label.txt"
  local timing="$OUT/$label.time"
  local command=(wrk -t"$threads" -c"$connections" -d"$duration" --timeout 5s --latency -s "$BENCH_DIR/$script" "$BASE")
  echo "\$ ${command[*]}" >"$output"
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f '%U %S' -o "$timing" "${command[@]}" >>"$output" 2>&1 || true
  else
    "${command[@]}" >>"$output" 2>&1 || true
    echo "0 0" >"$timing"
  fi
  RESULT=$(grep '^RESULT ' "$output" || true)
  WRK_CPU_TICKS=$(awk -v hz="$CLK_TCK" 'END { printf "%d", ($1 + $2) * hz }' "$timing")
  if [ -z "$RESULT" ]; then
    echo "error: wrk produced no result for $label; see $output" >&2
    cat "$output" >&2
    return 1
  fi
}

field() { # RESULT-line key
  sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"
}

TABLE="$OUT/results.md"
{
  echo "| scenario | conns | req/s | p50 ms | p99 ms | error responses | socket errors | peak RSS MiB | busy after (s) | gateway CPU (cores) | of which commit thread | of which search indexing | wrk CPU | kernel threads | other CPU | steal | reruns |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$TABLE"
FAILED=0

# Waits (at most $WAIT_QUIET s) until the machine, apart from the gateway, has been idle
# (< $NOISE_LIMIT cores busy) for two consecutive 2 s windows.
wait_quiet() {
  [ "$WAIT_QUIET" -gt 0 ] || return 0
  local deadline=$((SECONDS + WAIT_QUIET)) calm=0 busy
  while [ "$SECONDS" -lt "$deadline" ]; do
    local machine_before threads_before
    machine_before=$(machine_ticks)
    threads_before=$(thread_ticks | awk '{ total += $2 } END { print total + 0 }')
    sleep 2
    busy=$(awk -v hz="$CLK_TCK" -v mb="$machine_before" -v ma="$(machine_ticks)" -v tb="$threads_before" \
           -v ta="$(thread_ticks | awk '{ total += $2 } END { print total + 0 }')" \
           'BEGIN { split(mb, b, " "); split(ma, a, " "); printf "%.2f", ((a[1] - b[1]) - (ta - tb)) / hz / 2 }')
    if awk -v busy="$busy" -v limit="$NOISE_LIMIT" 'BEGIN { exit !(busy < limit) }'; then
      calm=$((calm + 1))
      [ "$calm" -ge 2 ] && return 0
    else
      calm=0
      echo "   waiting for a quiet machine ($busy cores busy elsewhere)" >&2
    fi
  done
  echo "   warning: the machine did not become quiet within ${WAIT_QUIET}s; measuring anyway" >&2
}

# Waits (at most 600 s) until the gateway itself is idle (< 0.05 cores over 1 s: background
# work such as search indexing has caught up); prints the seconds waited.
wait_gateway_idle() {
  local start=$SECONDS before after
  while [ $((SECONDS - start)) -lt 600 ]; do
    before=$(thread_ticks | awk '{ total += $2 } END { print total + 0 }')
    sleep 1
    after=$(thread_ticks | awk '{ total += $2 } END { print total + 0 }')
    if [ $((after - before)) -lt $((CLK_TCK / 20 + 1)) ]; then
      break
    fi
  done
  echo $((SECONDS - start - 1))
}

# Runs a scenario; if other processes used more than $NOISE_LIMIT cores during it, waits for
# quiet and measures again, up to $RETRIES times. The table shows the last attempt.
scenario() { # name connections script
  local attempt=0
  while :; do
    wait_quiet
    measure "$@"
    if awk -v other="$OTHER_CPU" -v limit="$NOISE_LIMIT" 'BEGIN { exit !(other > limit) }' && [ "$attempt" -lt "$RETRIES" ]; then
      attempt=$((attempt + 1))
      echo "   noisy ($OTHER_CPU cores used by other processes or stolen by the hypervisor): measuring again ($attempt/$RETRIES)" >&2
      continue
    fi
    break
  done
  echo "${ROW/ | RERUNS |/ | $attempt |}" >>"$TABLE"
}

measure() { # name connections script
  local name=$1 connections=$2 script=$3
  local label="$name-c$connections"
  local idle_wait
  idle_wait=$(wait_gateway_idle)
  [ "$idle_wait" -gt 0 ] && echo "   waited ${idle_wait}s for the gateway to finish background work" >&2
  echo "== $label: warm-up $WARMUP" >&2
  run_wrk "$label-warmup" "$connections" "$script" "$WARMUP"
  local warmup_errors
  warmup_errors=$(( $(field "$RESULT" status_errors) + $(field "$RESULT" timeouts) ))

  echo "== $label: $DURATION" >&2
  local before_threads before_machine after_threads after_machine
  local before_kernel after_kernel
  before_threads=$(thread_ticks)
  before_kernel=$(kernel_thread_ticks)
  before_machine=$(machine_ticks)
  run_wrk "$label" "$connections" "$script" "$DURATION"
  after_machine=$(machine_ticks)
  after_kernel=$(kernel_thread_ticks)
  after_threads=$(thread_ticks)

  local requests duration_us rps p50 p99 status_errors socket_errors timeouts
  requests=$(field "$RESULT" requests)
  duration_us=$(field "$RESULT" duration_us)
  rps=$(field "$RESULT" rps)
  p50=$(awk -v us="$(field "$RESULT" p50_us)" 'BEGIN { printf "%.2f", us / 1000 }')
  p99=$(awk -v us="$(field "$RESULT" p99_us)" 'BEGIN { printf "%.2f", us / 1000 }')
  status_errors=$(field "$RESULT" status_errors)
  timeouts=$(field "$RESULT" timeouts)
  socket_errors=$(( $(field "$RESULT" connect_errors) + $(field "$RESULT" read_errors) + $(field "$RESULT" write_errors) + timeouts ))

  # CPU over the run, in cores (ticks / (seconds * hz)).
  local cpu
  cpu=$(awk -v hz="$CLK_TCK" -v us="$duration_us" -v wrk_ticks="$WRK_CPU_TICKS" \
        -v before="$before_threads" -v after="$after_threads" \
        -v machine_before="$before_machine" -v machine_after="$after_machine" \
        -v kernel_ticks="$((after_kernel - before_kernel))" 'BEGIN {
      seconds = us / 1e6
      n = split(before, lines, "\n"); for (i = 1; i <= n; i++) { split(lines[i], f, " "); b[f[1]] = f[2] }
      n = split(after, lines, "\n");
      for (i = 1; i <= n; i++) { split(lines[i], f, " "); d = f[2] - b[f[1]]; total += d; if (f[1] == "commit") commit += d; if (f[1] ~ /^(indexer|thrd-tantivy|merge_thread|docstore|segment_updater)/) indexer += d }
      split(machine_before, mb, " "); split(machine_after, ma, " ")
      busy = ma[1] - mb[1]; steal = ma[2] - mb[2]
      if (kernel_ticks < 0) kernel_ticks = 0   # a kernel thread exited during the run
      other = busy - total - wrk_ticks - kernel_ticks; if (other < 0) other = 0
      c = hz * seconds
      printf "%.2f %.2f %.2f %.2f %.2f %.2f %.2f", total / c, commit / c, indexer / c, wrk_ticks / c, kernel_ticks / c, other / c, steal / c
    }')
  local gateway_cpu commit_cpu indexer_cpu wrk_cpu kernel_cpu other_cpu steal_cpu
  read -r gateway_cpu commit_cpu indexer_cpu wrk_cpu kernel_cpu other_cpu steal_cpu <<<"$cpu"
  {
    echo "# per-thread CPU ticks (hz=$CLK_TCK) before:"; echo "$before_threads"
    echo "# after:"; echo "$after_threads"
  } >"$OUT/$label.threads"

  local hwm rss busy_after
  busy_after=$(wait_gateway_idle)
  hwm=$(awk -v kib="$(vm_kib VmHWM)" 'BEGIN { printf "%.1f", kib / 1024 }')
  rss=$(awk -v kib="$(vm_kib VmRSS)" 'BEGIN { printf "%.1f", kib / 1024 }')

  local verdict=""
  if [ "$status_errors" != 0 ] || [ "$timeouts" != 0 ] || [ "$warmup_errors" != 0 ] || [ "$requests" = 0 ]; then
    verdict=" **FAIL**"
    FAILED=1
    echo "FAIL: $label: $status_errors error responses, $timeouts timeouts (warm-up: $warmup_errors); see $OUT/$label.txt" >&2
  fi
  # Noise: other processes, and CPU time the hypervisor took away (steal).
  OTHER_CPU=$(awk -v other="$other_cpu" -v steal="$steal_cpu" 'BEGIN { printf "%.2f", other + steal }')
  ROW="| $name$verdict | $connections | $rps | $p50 | $p99 | $status_errors | $socket_errors | $hwm | $busy_after | $gateway_cpu | $commit_cpu | $indexer_cpu | $wrk_cpu | $kernel_cpu | $other_cpu | $steal_cpu | RERUNS |"
  echo "   $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $status_errors, VmHWM $hwm MiB (VmRSS $rss), busy ${busy_after}s after the run, gateway $gateway_cpu cores (commit $commit_cpu, indexer $indexer_cpu), wrk $wrk_cpu, kernel threads $kernel_cpu, other $other_cpu, steal $steal_cpu" >&2
}

body_of() { # resource type
  case $1 in
    Patient) echo "$PATIENT_BODY" ;;
    Observation) echo "$OBSERVATION_BODY" ;;
  esac
}

export BENCH_DIR PREFER
for name in $SCENARIOS; do
  resource_type=${name#*-}
  case $name in
    create-*)
      export RESOURCE_TYPE=$resource_type BODY_FILE
      BODY_FILE=$(body_of "$resource_type")
      for connections in $CONNECTIONS; do
        scenario "$name" "$connections" create.lua
      done
      ;;
    read-*)
      export IDS_FILE="$OUT/ids-$resource_type.txt"
      if [ ! -s "$IDS_FILE" ]; then
        echo "== preloading $PRELOAD $resource_type" >&2
        python3 "$BENCH_DIR/preload.py" "$BASE" "$resource_type" "$(body_of "$resource_type")" "$PRELOAD" "$IDS_FILE" 8
      fi
      for connections in $CONNECTIONS; do
        scenario "$name" "$connections" read.lua
      done
      ;;
    w1)
      for connections in $CONNECTIONS; do
        scenario "$name" "$connections" w1.lua
      done
      ;;
    transaction)
      # Issue #3 W1's shape with the official examples: 1 Patient + 1 Observation whose subject
      # is the Patient's urn:uuid, one transaction per request.
      BODY_FILE="$OUT/transaction.json"
      python3 "$BENCH_DIR/w1_bundle.py" "$PATIENT_BODY" "$OBSERVATION_BODY" "$BODY_FILE"
      export RESOURCE_TYPE="" BODY_FILE
      for connections in $CONNECTIONS; do
        scenario "$name" "$connections" create.lua
      done
      ;;
    *) echo "error: unknown scenario $name" >&2; exit 2 ;;
  esac
done

{
  echo
  echo "Records in the store at the end: $(curl -fsS "$BASE/ledger/checkpoint" | sed -n 2p) ledger entries; data directory $(du -sh "$DATA" | cut -f1)."
  echo "CPU gauge after: $(cpu_gauge). Load average after: $(cut -d' ' -f1-3 /proc/loadavg). 'busy after' = seconds the gateway kept working (e.g. search indexing) after the load stopped; peak RSS is read after that. CPU columns are cores busy over the measured run (2 = both cores of a 2-core machine); 'kernel threads' are mostly the file system flushing the gateway's writes; 'other' is every other process on the machine (other + steal > NOISE_LIMIT=$NOISE_LIMIT is noise); reruns = measurements discarded as noisy; error responses = HTTP status > 399; socket errors include timeouts (5 s)."
} >>"$TABLE"

echo >&2
cat "$OUT/machine.txt"
echo
cat "$TABLE"
exit "$FAILED"
