#!/usr/bin/env bash
# Two builds under the same load at the same time: each gets its own wrk with half the
# connections, so the VM's drifting speed (up to 1.5x from hour to hour here) and any other
# noise hit both alike, and the ratio of their throughputs is the comparison. Rounds alternate
# which build is started first.
#
#   bench/side_by_side.sh OLD_BINARY NEW_BINARY [ROUNDS]        (default 5 rounds)
#
# Environment: SCENARIOS="w1 create-Patient read-Patient" DURATION=15s CONNECTIONS=16 (each).
# Prints per round and scenario: old and new requests/s and new/old; then the median ratio.
set -euo pipefail
old=$(realpath "${1:?usage: side_by_side.sh OLD NEW [ROUNDS]}")
new=$(realpath "${2:?usage: side_by_side.sh OLD NEW [ROUNDS]}")
rounds=${3:-5}
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
export BENCH_DIR
CORPORA="$BENCH_DIR/../../shared/corpora/fhir-r4-examples"
SCENARIOS=${SCENARIOS:-w1 create-Patient read-Patient}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-16}
work=$(mktemp -d)
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT

start() { # name binary -> sets PORT_<name>, TOKEN_<name>
  local name=$1 binary=$2 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/$name"
  "$binary" serve --listen "127.0.0.1:$port" --data-dir "$work/$name/data" >"$work/$name/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  printf -v "PORT_$name" '%s' "$port"
  printf -v "TOKEN_$name" '%s' "$("$binary" token --data-dir "$work/$name/data" --aud "http://127.0.0.1:$port/fhir" --minutes 600)"
}

# wrk for one scenario against one gateway; prints requests/s.
load() { # name scenario
  local name=$1 scenario=$2 port_var="PORT_$1" token_var="TOKEN_$1" script
  local base="http://127.0.0.1:${!port_var}"
  case "$scenario" in
    w1) script=w1.lua ;;
    create-Patient) script=create.lua; export RESOURCE_TYPE=Patient BODY_FILE="$CORPORA/Patient/Patient-example.json" ;;
    read-Patient) script=read.lua; export IDS_FILE="$work/$name/ids.txt" RESOURCE_TYPE=Patient ;;
  esac
  BENCH_TOKEN=${!token_var} wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --timeout 5s -s "$BENCH_DIR/$script" "$base" 2>&1 |
    awk '/^Requests\/sec/ {print $2}'
}

ratios="$work/ratios"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then start old "$old"; start new "$new"; else start new "$new"; start old "$old"; fi
  for name in old new; do
    port_var="PORT_$name"; token_var="TOKEN_$name"
    BENCH_TOKEN=${!token_var} python3 "$BENCH_DIR/preload.py" "http://127.0.0.1:${!port_var}" Patient \
      "$CORPORA/Patient/Patient-example.json" 500 "$work/$name/ids.txt" >/dev/null
  done
  for scenario in $SCENARIOS; do
    load old "$scenario" >"$work/old.rps" & a=$!
    load new "$scenario" >"$work/new.rps" & b=$!
    wait $a $b
    o=$(cat "$work/old.rps"); n=$(cat "$work/new.rps")
    ratio=$(python3 -c "print(round($n / $o, 3))")
    echo "$scenario $ratio" >>"$ratios"
    echo "round $round $scenario: old $o/s, new $n/s, new/old $ratio"
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  pids=()
  rm -rf "$work/old" "$work/new"
done
python3 - "$ratios" <<'PY'
import statistics, sys, collections
by = collections.defaultdict(list)
for line in open(sys.argv[1]):
    scenario, ratio = line.split()
    by[scenario].append(float(ratio))
for scenario, ratios in by.items():
    print(f"{scenario}: median new/old {statistics.median(ratios):.3f} over {len(ratios)} rounds (min {min(ratios)}, max {max(ratios)})")
PY
