#!/usr/bin/env bash
# Real-client checks against a real gateway process:
#   1. fhirpy (tests/clients/test_fhirpy.py, pytest): create/read/update/delete, a transaction and
#      searches, as a client library does them;
#   1b. fhir-kit-client (tests/clients/fhir_kit_client.test.mjs, node --test): a transaction,
#      reads and a search (installed by `npm ci --prefix tests/clients`);
#   2. schemathesis: generated requests against openapi.yaml; no 5xx, every response as documented;
#   3. after a graceful stop (SIGTERM, exit 0): no panic in the log, `fhir-gateway verify` is clean.
#
# Usage: tests/clients/run.sh path/to/fhir-gateway
# Python comes from $FHIR_GATEWAY_VENV (default: <repo>/.venv) with tests/clients/requirements.txt
# installed; this script installs nothing. SCHEMATHESIS_SEED=<n> replays a schemathesis run.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 path/to/fhir-gateway" >&2
    exit 2
fi
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${FHIR_GATEWAY_VENV:-$REPO/.venv}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
PYTHON="$VENV/bin/python"
SCHEMATHESIS="$VENV/bin/schemathesis"
for tool in "$BIN" "$PYTHON" "$SCHEMATHESIS"; do
    if [[ ! -x "$tool" ]]; then
        echo "run.sh: $tool is missing (build the gateway; install tests/clients/requirements.txt into $VENV)" >&2
        exit 2
    fi
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fhir-gateway-clients.XXXXXX")"
GATEWAY_PID=""
CHILD_PID=""
FAILED=0

# Runs "$@" in the background and waits for it: bash defers traps while a foreground child runs,
# so this lets SIGINT/SIGTERM reach the trap at once, and the trap stops the child.
run_child() {
    local status=0
    "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || status=$?
    CHILD_PID=""
    return "$status"
}

stop_gateway() {
    # SIGTERM (graceful: finish requests, commit, final checkpoint), then wait; SIGKILL after 30 s.
    [[ -n "$GATEWAY_PID" ]] || return 0
    local pid="$GATEWAY_PID" status=0
    GATEWAY_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: the gateway did not stop within 30 s of SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 1
    fi
    wait "$pid" 2>/dev/null || status=$?
    if [[ $status -ne 0 ]]; then
        echo "run.sh: the gateway exited with status $status after SIGTERM" >&2
        return 1
    fi
}

cleanup() {
    local status=$?
    stop_gateway || status=1
    if [[ $status -ne 0 && -s "$TMP/gateway.log" ]]; then
        echo "---- gateway log (last 50 lines) ----" >&2
        tail -n 50 "$TMP/gateway.log" >&2
    fi
    rm -rf "$TMP"
    exit "$status"
}

on_signal() {
    if [[ -n "$CHILD_PID" ]]; then
        kill -TERM "$CHILD_PID" 2>/dev/null || true
        wait "$CHILD_PID" 2>/dev/null || true
    fi
    exit "$1"
}

trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
ROOT="http://127.0.0.1:$PORT"
mkdir -p "$TMP/data" "$TMP/schemathesis"
FHIR_GATEWAY_LOG="${FHIR_GATEWAY_LOG:-warn}" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" >"$TMP/gateway.log" 2>&1 &
GATEWAY_PID=$!

# Wait for /healthz: at most 30 s, and give up at once if the gateway exits.
WAIT_READY='
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("run.sh: the gateway exited before it was ready")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(f"run.sh: {url} did not answer 200 within 30 s")
'
run_child "$PYTHON" -c "$WAIT_READY" "$ROOT/healthz" "$GATEWAY_PID"
echo "run.sh: gateway ready at $ROOT"
# Every FHIR request needs an access token: one from the development issuer, as an EMR would
# hold (a backend-service token for everything).
FHIR_TOKEN="$("$BIN" token --data-dir "$TMP/data" --aud "$ROOT/fhir" --scope 'system/*.cruds')"
export FHIR_TOKEN

echo "==== fhirpy (pytest) ===="
if ! FHIR_BASE="$ROOT/fhir" run_child "$PYTHON" -m pytest -q -p no:cacheprovider "$REPO/tests/clients"; then
    FAILED=1
fi

echo "==== fhir-kit-client (node --test) ===="
if [ ! -d "$REPO/tests/clients/node_modules/fhir-kit-client" ]; then
    echo "run.sh: fhir-kit-client is not installed (npm ci --prefix tests/clients)" >&2
    FAILED=1
elif ! FHIR_BASE="$ROOT/fhir" run_child node --test "$REPO/tests/clients/fhir_kit_client.test.mjs"; then
    FAILED=1
fi

echo "==== schemathesis ===="
# Checks:
#   not_a_server_error and the four *_conformance checks: no 5xx, and every status, media type,
#     header and body as openapi.yaml documents it;
#   negative_data_rejection: requests that break the document are refused with a 4xx;
#   unsupported_method: a method a route does not serve gets 405 with Allow;
#   ensure_resource_availability: a resource just created is readable through the links.
# Left out on purpose:
#   positive_data_acceptance: a schema-valid body is any JSON object with a resourceType, but the
#     server validates it against R4 (422), which no OpenAPI schema for 146 types can express;
#   use_after_free: in FHIR a deleted resource's history and old versions stay readable (200).
SEED_ARGS=()
if [[ -n "${SCHEMATHESIS_SEED:-}" ]]; then
    SEED_ARGS=(--seed "$SCHEMATHESIS_SEED")
fi
# From a scratch directory: schemathesis keeps a .schemathesis/ cache in its working directory.
if ! run_child sh -c 'cd "$1" && shift && exec "$@"' sh "$TMP/schemathesis" \
        "$SCHEMATHESIS" --no-color run "$REPO/openapi.yaml" \
        --url "$ROOT" \
        --header "Authorization: Bearer $FHIR_TOKEN" \
        --max-examples 30 \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method,ensure_resource_availability \
        --generation-database none \
        --request-timeout 30 \
        "${SEED_ARGS[@]}"; then
    FAILED=1
fi

echo "==== graceful stop, then verify ===="
if ! stop_gateway; then
    FAILED=1
fi
if grep -q "panicked" "$TMP/gateway.log"; then
    echo "run.sh: the gateway panicked:" >&2
    grep -A5 "panicked" "$TMP/gateway.log" >&2
    FAILED=1
fi
if ! run_child "$BIN" verify --data-dir "$TMP/data"; then
    echo "run.sh: fhir-gateway verify found problems in the data directory" >&2
    FAILED=1
fi

if [[ $FAILED -ne 0 ]]; then
    echo "run.sh: FAILED" >&2
    exit 1
fi
echo "run.sh: all client checks passed"
