#!/usr/bin/env bash
# Issue #3 W2: `fhir-gateway import` throughput on the Synthea corpora (see docs/BENCHMARKS.md).
#
#   bench/w2.sh PATH/TO/fhir-gateway [PATH/TO/other-fhir-gateway ...]
#
# Imports the 21 Synthea transaction Bundles and the bulk ndjson export, each into a fresh data
# directory, REPEAT times per binary; binaries alternate run by run so that they share the VM's
# drifts. The corpora are small (6,533 and 7,160 resources, about a second each), hence the
# repeats: the table gives the median and the range of resources/s and the largest peak RSS.
# Needs GNU time (/usr/bin/time).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 PATH/TO/fhir-gateway [...]" >&2; exit 2; }
REPEAT=${REPEAT:-7}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SYNTHEA="$REPO/../shared/corpora/synthea"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

declare -A rates rss
for round in $(seq "$REPEAT"); do
  for bin in "$@"; do
    for corpus in r4-transaction-bundles bulk-ndjson-10-patients; do
      data="$SCRATCH/data"
      rm -rf "$data"
      out=$(/usr/bin/time -f "rss_kb=%M" "$bin" import --data-dir "$data" "$SYNTHEA/$corpus" 2>&1)
      echo "$out" | grep -q "^failures: 0" || { echo "$out" >&2; echo "error: import failed" >&2; exit 1; }
      rate=$(echo "$out" | sed -n 's/.*(\([0-9]*\) resources\/s).*/\1/p')
      kb=$(echo "$out" | sed -n 's/.*rss_kb=\([0-9]*\).*/\1/p')
      rates["$bin|$corpus"]+="$rate "
      rss["$bin|$corpus"]="$(( kb > ${rss["$bin|$corpus"]:-0} ? kb : ${rss["$bin|$corpus"]:-0} ))"
    done
  done
done

echo "| binary | corpus | median resources/s | min | max | peak RSS MiB |"
echo "|---|---|---:|---:|---:|---:|"
for bin in "$@"; do
  for corpus in r4-transaction-bundles bulk-ndjson-10-patients; do
    sorted=$(echo ${rates["$bin|$corpus"]} | tr ' ' '\n' | sort -n)
    count=$(echo "$sorted" | wc -l)
    median=$(echo "$sorted" | sed -n "$(( (count + 1) / 2 ))p")
    echo "| $bin | $corpus | $median | $(echo "$sorted" | head -1) | $(echo "$sorted" | tail -1) | $(( ${rss["$bin|$corpus"]} / 1024 )) |"
  done
done
