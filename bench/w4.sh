#!/usr/bin/env bash
# Issue #3 W4: searches on a store of 1,000,000 Observations (docs/BENCHMARKS.md).
#
#   bench/w4.sh PATH/TO/fhir-gateway [WORK_DIR]
#
# 1. bench/gen_w4.py writes $PATIENTS Patients and $OBSERVATIONS Observations (ndjson, derived
#    from the official examples) into WORK_DIR/ndjson (kept and reused if present);
# 2. `fhir-gateway import` loads them into a fresh WORK_DIR/data (timed; peak RSS);
# 3. `fhir-gateway serve`, then wrk for $DURATION per query and connection count:
#    Observation?patient=X&code=Y (a pair that exists) and Patient?family=<prefix>&birthdate=ge<year>;
#    prints p50/p99, requests/s and the gateway's peak RSS as a markdown table.
# Environment: PATIENTS=10000 OBSERVATIONS=1000000 DURATION=15s WARMUP=3s CONNECTIONS="1 8" KEEP_DATA=0
# QUERIES="observation patient patient-total-none" (add read for W3: reads by id) REUSE_DATA=0 (1: measure the searches on WORK_DIR/data kept by an earlier KEEP_DATA=1 run).
# Needs wrk, curl, python3, /usr/bin/time. Reads ../shared/corpora/fhir-r4-examples.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 PATH/TO/fhir-gateway [WORK_DIR]" >&2; exit 2; }
BIN=$(realpath "$1")
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
WORK=${2:-$(mktemp -d)}
PATIENTS=${PATIENTS:-10000}
OBSERVATIONS=${OBSERVATIONS:-1000000}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-1 8}
KEEP_DATA=${KEEP_DATA:-0}
mkdir -p "$WORK"
echo "work directory: $WORK" >&2

if [ ! -s "$WORK/ndjson/2-observations.ndjson" ]; then
  python3 "$BENCH_DIR/gen_w4.py" "$REPO/../shared/corpora/fhir-r4-examples" "$WORK/ndjson" "$PATIENTS" "$OBSERVATIONS" >&2
fi

if [ "${REUSE_DATA:-0}" != 1 ]; then
  rm -rf "$WORK/data"
  /usr/bin/time -v "$BIN" import --data-dir "$WORK/data" "$WORK/ndjson/1-patients.ndjson" "$WORK/ndjson/2-observations.ndjson" \
    >"$WORK/import.txt" 2>"$WORK/import-time.txt"
  IMPORT_RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/import-time.txt")
  IMPORT_SECONDS=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/import-time.txt")
  echo "import: $(tail -n 3 "$WORK/import.txt" | tr '\n' ' ') wall $IMPORT_SECONDS, peak RSS $((IMPORT_RSS_KB / 1024)) MiB" >&2
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT/fhir"
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
trap 'kill "$GATEWAY_PID" 2>/dev/null || true; wait "$GATEWAY_PID" 2>/dev/null || true; [ "$KEEP_DATA" = 1 ] || rm -rf "$WORK/data"' EXIT
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { echo "the gateway exited; see $WORK/gateway.log" >&2; exit 1; }
  sleep 0.2
done
BENCH_TOKEN=$("$BIN" token --data-dir "$WORK/data" --aud "$BASE" --minutes 120)
export BENCH_TOKEN BENCH_DIR W4_DIR="$WORK/ndjson" W4_PATIENTS="$PATIENTS" W4_OBSERVATIONS="$OBSERVATIONS"
# The first search waits until the index covers the import.
curl -fsS -H "Authorization: Bearer $BENCH_TOKEN" "$BASE/Observation?patient=p1&_count=1" >/dev/null

echo "| query | conns | req/s | p50 ms | p99 ms | max ms | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for query in ${QUERIES:-observation patient patient-total-none}; do
  for connections in $CONNECTIONS; do
    W4_QUERY=$query wrk -t1 -c"$connections" -d"${WARMUP:-3s}" --timeout 5s -s "$BENCH_DIR/w4.lua" "http://127.0.0.1:$PORT" >/dev/null
    W4_QUERY=$query wrk -t1 -c"$connections" -d"$DURATION" --timeout 5s --latency -s "$BENCH_DIR/w4.lua" "http://127.0.0.1:$PORT" \
      >"$WORK/$query-c$connections.txt"
    line=$(grep '^RESULT' "$WORK/$query-c$connections.txt")
    value() { echo "$line" | tr ' ' '\n' | awk -F= -v key="$1" '$1 == key {print $2}'; }
    errors=$(( $(value status_errors) + $(value timeouts) + $(value read_errors) ))
    awk -v q="$query" -v c="$connections" -v rps="$(value rps)" -v p50="$(value p50_us)" -v p99="$(value p99_us)" -v max="$(value max_us)" -v e="$errors" \
      'BEGIN { printf "| %s | %d | %.0f | %.2f | %.2f | %.1f | %d |\n", q, c, rps, p50 / 1000, p99 / 1000, max / 1000, e }'
  done
done
echo
echo "gateway peak RSS: $(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$GATEWAY_PID/status") MiB (RssAnon now $(awk '/RssAnon/ {print int($2 / 1024)}' "/proc/$GATEWAY_PID/status") MiB); data directory: $(du -shL "$WORK/data" | cut -f1)"
