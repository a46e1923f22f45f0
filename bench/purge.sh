#!/usr/bin/env bash
# Issue #18: `Patient/$purge` of a patient with 10,000 resources (docs/BENCHMARKS.md).
#
#   bench/purge.sh PATH/TO/fhir-gateway [WORK_DIR]
#
# Imports one Patient with $OBSERVATIONS Observations, beside $OTHERS other patients with one
# Observation each (so the index holds more than the erased patient), starts `serve`, then times
# `POST Patient/purge-me/$purge` with curl (wall clock of the request: record, key, index merge,
# blocks) and checks the answer and a read afterwards (410).
# Environment: OBSERVATIONS=10000 OTHERS=10000. Needs curl, python3.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 PATH/TO/fhir-gateway [WORK_DIR]" >&2; exit 2; }
BIN=$(realpath "$1")
WORK=${2:-$(mktemp -d)}
OBSERVATIONS=${OBSERVATIONS:-10000}
OTHERS=${OTHERS:-10000}
mkdir -p "$WORK"
rm -rf "$WORK/data"
echo "work directory: $WORK" >&2

python3 - "$WORK" "$OBSERVATIONS" "$OTHERS" <<'EOF'
import json, sys
work, observations, others = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def observation(id, patient, value):
    return {"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "valueQuantity": {"value": value, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}}
with open(f"{work}/1-patients.ndjson", "w") as out:
    out.write(json.dumps({"resourceType": "Patient", "id": "purge-me", "name": [{"family": "Purge"}]}) + "\n")
    for n in range(others):
        out.write(json.dumps({"resourceType": "Patient", "id": f"other-{n}", "name": [{"family": f"Other{n}"}]}) + "\n")
with open(f"{work}/2-observations.ndjson", "w") as out:
    for n in range(observations):
        out.write(json.dumps(observation(f"purge-obs-{n}", "purge-me", 10 + n % 90)) + "\n")
    for n in range(others):
        out.write(json.dumps(observation(f"other-obs-{n}", f"other-{n}", 12)) + "\n")
EOF
"$BIN" import --data-dir "$WORK/data" "$WORK/1-patients.ndjson" "$WORK/2-observations.ndjson" >&2

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT/fhir"
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
trap 'kill "$GATEWAY_PID" 2>/dev/null || true; wait "$GATEWAY_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { echo "the gateway exited; see $WORK/gateway.log" >&2; exit 1; }
  sleep 0.2
done
TOKEN=$("$BIN" token --data-dir "$WORK/data" --aud "$BASE" --minutes 30 --scope 'system/*.cruds system/Patient.$purge')
# The first search waits until the index covers the import.
curl -fsS -H "Authorization: Bearer $TOKEN" "$BASE/Observation?subject=Patient/purge-me&_count=1" >/dev/null

curl -sS -o "$WORK/purge.json" -w 'status %{http_code}, %{time_total} s\n' -X POST -H "Authorization: Bearer $TOKEN" \
  "$BASE/Patient/purge-me/\$purge"
cat "$WORK/purge.json"; echo
curl -sS -o /dev/null -w 'read afterwards: %{http_code}\n' -H "Authorization: Bearer $TOKEN" "$BASE/Observation/purge-obs-0"
