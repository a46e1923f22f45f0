#!/usr/bin/env bash
# Where a create's CPU goes, against the HTTP floor (see docs/BENCHMARKS.md).
#
#   bench/floor.sh PATH/TO/http_floor PATH/TO/fhir-gateway
#
# Runs, alternately and ROUNDS times, each for DURATION after WARMUP at CONNECTIONS wrk
# connections, the same POST of Patient-example.json (bench/create.lua) against:
#   floor-echo   the http_floor example answering 201 with the body (HTTP only)
#   floor-json   the same, parsing the body and serialising it again
#   gateway      `fhir-gateway serve`: a durable create (token check, validation, seal, CID,
#                signed ledger entry, group commit, audit record, search indexing)
# and prints, per run: requests/s, CPU µs per request of the server process and per thread
# name, of the whole machine (everything but idle, iowait and steal), and the steal share.
# A server's CPU per request is what the floor subtracts; the machine's includes wrk.
# Needs: wrk, curl, python3. Environment: DURATION=6s WARMUP=2s CONNECTIONS=32 ROUNDS=2
# RESOURCE_TYPE=Patient (or Observation).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 PATH/TO/http_floor PATH/TO/fhir-gateway" >&2; exit 2; }
FLOOR=$(realpath "$1")
GATEWAY=$(realpath "$2")
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-2}
RESOURCE_TYPE=${RESOURCE_TYPE:-Patient}
export BENCH_DIR RESOURCE_TYPE
export BODY_FILE="$REPO/../shared/corpora/fhir-r4-examples/$RESOURCE_TYPE/$RESOURCE_TYPE-example.json"
SCRATCH=$(mktemp -d)
SERVER=
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Thread name and utime+stime ticks of every thread of a process.
thread_ticks() { for task in /proc/"$1"/task/*; do
  name=$(tr ' ' '_' <"$task/comm" 2>/dev/null) || continue
  ticks=$(awk '{print $14 + $15}' "$task/stat" 2>/dev/null) || continue
  echo "$name $ticks"
done; }

measure() { # label pid port
  local label=$1 pid=$2 port=$3
  wrk -t2 -c"$CONNECTIONS" -d"$WARMUP" -s "$BENCH_DIR/create.lua" "http://127.0.0.1:$port" >/dev/null
  thread_ticks "$pid" >"$SCRATCH/threads0"; head -1 /proc/stat >"$SCRATCH/stat0"; awk '{print $14 + $15}' "/proc/$pid/stat" >"$SCRATCH/process0"
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s "$BENCH_DIR/create.lua" "http://127.0.0.1:$port" >"$SCRATCH/wrk.out"
  thread_ticks "$pid" >"$SCRATCH/threads1"; head -1 /proc/stat >"$SCRATCH/stat1"; awk '{print $14 + $15}' "/proc/$pid/stat" >"$SCRATCH/process1"
  python3 - "$label" "$SCRATCH" <<'PY'
import collections, os, re, sys
label, scratch = sys.argv[1], sys.argv[2]
read = lambda name: open(os.path.join(scratch, name)).read()
result = re.search(r"requests=(\d+) .*rps=([\d.]+).*status_errors=(\d+)", read("wrk.out"))
if not result or result.group(3) != "0":
    sys.exit(f"{label}: wrk failed or got error responses: {read('wrk.out')}")
requests, rate = int(result.group(1)), float(result.group(2))
hz = os.sysconf("SC_CLK_TCK")
per_request = lambda ticks: ticks / hz / requests * 1e6
stat0, stat1 = (list(map(int, read(name).split()[1:])) for name in ("stat0", "stat1"))
delta = [b - a for a, b in zip(stat0, stat1)]
total = sum(delta[:8])
busy = total - delta[3] - delta[4] - delta[7]
def threads(name):
    counter = collections.Counter()
    for line in read(name).splitlines():
        thread, ticks = line.rsplit(" ", 1)
        counter[thread] += int(ticks)
    return counter
before, after = threads("threads0"), threads("threads1")
process = per_request(int(read("process1")) - int(read("process0")))
listed = {thread: per_request(after[thread] - before.get(thread, 0)) for thread in after}
listed = {thread: value for thread, value in listed.items() if value >= 1}
exited = process - sum(listed.values())
parts = " ".join(f"{thread}={value:.0f}" for thread, value in sorted(listed.items(), key=lambda item: -item[1]))
print(f"| {label} | {rate:,.0f} | {process:.0f} | {per_request(busy):.0f} | {delta[7] / total:.0%} | {parts} exited-threads={exited:.0f} |")
PY
}

echo "| server | requests/s | server CPU µs/request | machine CPU µs/request | steal | server threads (µs/request) |"
echo "|---|---:|---:|---:|---:|---|"
for _ in $(seq "$ROUNDS"); do
  for mode in echo json; do
    port=$(free_port)
    "$FLOOR" --listen "127.0.0.1:$port" --mode "$mode" & SERVER=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
    export BENCH_TOKEN=unused
    measure "floor-$mode" "$SERVER" "$port"
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
  done
  port=$(free_port)
  data="$SCRATCH/data"; rm -rf "$data"
  "$GATEWAY" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$SCRATCH/gateway.log" 2>&1 & SERVER=$!
  for _ in $(seq 300); do curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  BENCH_TOKEN=$("$GATEWAY" token --data-dir "$data" --aud "http://127.0.0.1:$port/fhir" --minutes 60)
  export BENCH_TOKEN
  measure gateway "$SERVER" "$port"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
done
