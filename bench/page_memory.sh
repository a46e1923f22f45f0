#!/usr/bin/env bash
# What one page costs when the compartment or store behind it is large (issue #17, B11): one
# patient with 20,000 Observations, then `$everything?_count=1`, a system search
# `?_type=Observation&_count=1`, a type search `Observation?_count=1` and a `_revinclude` of all
# of them, one after another (time, and how far each raised the peak RSS), then six
# `$everything` at once (peak RSS, and RSS a second after they finished).
# Usage: bash bench/page_memory.sh path/to/release/fhir-gateway [OBSERVATIONS]
set -euo pipefail
binary=${1:?usage: page_memory.sh path/to/fhir-gateway [observations]}
observations=${2:-20000}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$binary" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token=$("$binary" token --data-dir "$work/data" --aud "http://127.0.0.1:$port/fhir")
python3 - "$port" "$token" "$pid" "$observations" <<'PY'
import json, sys, threading, time, urllib.request

port, token, pid, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = f"http://127.0.0.1:{port}/fhir"

def call(method, path, body=None):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/fhir+json")
    with urllib.request.urlopen(request, timeout=600) as response:
        return response.status, response.read()

def kib(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def reset_peak():
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")

status, body = call("POST", "/Patient", {"resourceType": "Patient", "name": [{"family": "Large"}]})
patient = json.loads(body)["id"]
observation = lambda n: {"resourceType": "Observation", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2026-01-01T10:00:00Z",
    "valueQuantity": {"value": 60 + n % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}
started = time.time()
for first in range(0, count, 500):
    entries = [{"resource": observation(n), "request": {"method": "POST", "url": "Observation"}} for n in range(first, min(count, first + 500))]
    call("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
print(f"loaded {count} Observations in {time.time() - started:.1f} s")
call("GET", "/Observation?_count=1&_total=none")  # waits for the index
time.sleep(2)
print(f"RSS idle: {kib('VmRSS') // 1024} MiB")
print("| request | status | seconds | bytes | peak RSS rise (MiB) |")
print("|---|---|---|---|---|")
for path in [f"/Patient/{patient}/$everything?_count=1", "?_type=Observation&_count=1", "/Observation?_count=1",
             f"/Patient?_id={patient}&_revinclude=Observation:subject"]:
    reset_peak()
    before = kib("VmRSS")
    started = time.time()
    status, body = call("GET", path)
    print(f"| `{path.replace(patient, 'X')}` | {status} | {time.time() - started:.2f} | {len(body)} | {(kib('VmHWM') - before) / 1024:.0f} |")
reset_peak()
before = kib("VmRSS")
threads = [threading.Thread(target=call, args=("GET", f"/Patient/{patient}/$everything?_count=1")) for _ in range(6)]
started = time.time()
for thread in threads: thread.start()
for thread in threads: thread.join()
elapsed = time.time() - started
time.sleep(1)
print(f"six $everything?_count=1 at once: {elapsed:.2f} s, peak RSS {kib('VmHWM') // 1024} MiB (from {before // 1024}), a second later {kib('VmRSS') // 1024} MiB")
PY
