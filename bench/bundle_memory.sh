#!/usr/bin/env bash
# Peak RSS of the gateway while 20 clients each POST a 4 MB transaction Bundle at once
# (issue #3: "twenty concurrent 4 MB Bundles must not take the gateway above about 300 MB RSS").
# Usage: bash bench/bundle_memory.sh path/to/release/fhir-gateway
set -euo pipefail
binary=${1:?usage: bundle_memory.sh path/to/fhir-gateway}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$work/bundle.json" <<'PY'
import glob, json, os, sys
files = sorted(glob.glob('../shared/corpora/synthea/r4-transaction-bundles/*.json'), key=os.path.getsize)
bundle = json.load(open(files[-1]))
observations = [e for e in bundle['entry'] if e['resource']['resourceType'] == 'Observation']
copy = 0
while len(json.dumps(bundle['entry'])) < 4 * 1024 * 1024:
    for entry in observations:
        entry = json.loads(json.dumps(entry))
        entry['fullUrl'] = 'urn:uuid:00000000-0000-4000-8000-%012d' % copy
        copy += 1
        bundle['entry'].append(entry)
json.dump(bundle, open(sys.argv[1], 'w'))
print('bundle: %d entries, %d bytes' % (len(bundle['entry']), os.path.getsize(sys.argv[1])))
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$binary" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token=$("$binary" token --data-dir "$work/data" --aud "http://127.0.0.1:$port/fhir")
start=$(date +%s.%N)
for _ in $(seq 20); do
  curl -s -o /dev/null -w '%{http_code}\n' -X POST -H 'Content-Type: application/fhir+json' \
       -H 'Prefer: return=minimal' -H "Authorization: Bearer $token" --data-binary @"$work/bundle.json" "http://127.0.0.1:$port/fhir" &
done | sort | uniq -c
end=$(date +%s.%N)
echo "20 bundles in $(python3 -c "print(round($end - $start, 1))") s"
grep -E 'VmHWM' "/proc/$pid/status"
