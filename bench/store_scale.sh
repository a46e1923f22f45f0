#!/usr/bin/env bash
# Memory and startup against store size: for each size N, a W4-shaped store (bench/gen_w4.py:
# N/10 Patients, the rest Observations) is imported, then the gateway is started on it.
#
#   bench/store_scale.sh BINARY N [N ...]        e.g. bench/store_scale.sh target/release/fhir-gateway 100000 400000
#
# Prints per size: import seconds (the whole command: since 2a5276e that includes the compaction
# at its end, which `import` prints apart), resources/s and peak RSS; the start's time until /metadata
# answers; anonymous RSS (RssAnon: the process's own memory, not the page cache) 3 s later;
# the data directory's size. Scratch data lives under $WORK (default: a fresh mktemp -d), removed
# at the end unless KEEP=1 (which keeps each size's input-N and data-N: bench/w4.sh measures
# reads and searches on them with REUSE_DATA=1; REUSE=1 starts on a data-N kept so, skipping the
# import).
set -euo pipefail
binary=$(realpath "${1:?usage: store_scale.sh BINARY N [N ...]}")
shift
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
CORPORA="$BENCH_DIR/../../shared/corpora/fhir-r4-examples"
work=${WORK:-$(mktemp -d)}
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ "${KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT
for n in "$@"; do
  patients=$((n / 10)); observations=$((n - patients))
  input="$work/input-$n"; data="$work/data-$n"
  if [ "${REUSE:-0}" = 1 ] && [ -d "$data" ]; then
    import_secs=0 import_kb=0
  else
    python3 "$BENCH_DIR/gen_w4.py" "$CORPORA" "$input" "$patients" "$observations" >/dev/null
    /usr/bin/time -f "%e %M" -o "$work/import-time" "$binary" import --data-dir "$data" "$input" >/dev/null 2>"$work/import-log"
    read -r import_secs import_kb <"$work/import-time"
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  started=$(date +%s.%N)
  "$binary" serve --listen "127.0.0.1:$port" --data-dir "$data" --anonymous true >"$work/serve-log" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$port/fhir/metadata" >/dev/null && break; sleep 0.05; done
  ready=$(date +%s.%N)
  sleep 3
  rss_anon=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  python3 - "$n" "$import_secs" "$import_kb" "$started" "$ready" "$rss_anon" "$(du -sm "$data" | cut -f1)" <<'PY'
import sys
n, secs, kb, started, ready, anon, mb = sys.argv[1:]
n, secs = int(n), float(secs)
imported = f"import {secs:.1f} s ({n / secs:,.0f}/s, peak RSS {int(kb) // 1024} MiB)" if secs else "reused"
print(f"{n:>10,} resources: {imported}; "
      f"start {float(ready) - float(started):.2f} s; RssAnon after start {int(anon) // 1024} MiB; data {mb} MiB")
PY
  [ "${KEEP:-0}" = 1 ] || rm -rf "$input" "$data"
done
