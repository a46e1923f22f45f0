#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (not part of CI; see docs/FUZZING.md).
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 300 s; all three targets)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler (libFuzzer is built from
# source). The machine's stable toolchain works: no sanitizer (`-s none`, libFuzzer's coverage
# guidance only), RUSTC_BOOTSTRAP for the one unstable flag cargo-fuzz passes. Seeds come from
# ../shared/corpora (the official R4 examples); corpora grow under tests/fuzz/corpus/ and
# crashes land in tests/fuzz/artifacts/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET=${1:-300}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(resource_json search_query bundle)
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/fhir-gateway-fuzz-target}"
export RUSTC_BOOTSTRAP=1
EXAMPLES=../shared/corpora/fhir-r4-examples

seed() { # target directory
  local target=$1 directory=$2
  mkdir -p "$directory"
  [ -n "$(ls -A "$directory")" ] && return
  case "$target" in
    resource_json)
      find "$EXAMPLES" -name '*.json' -size -64k | head -500 | while read -r file; do cp "$file" "$directory/"; done ;;
    bundle)
      find "$EXAMPLES/Bundle" -name '*.json' -size -256k 2>/dev/null | head -200 | while read -r file; do cp "$file" "$directory/"; done ;;
    search_query)
      printf '\001name=peter&birthdate=ge1970&_sort=-birthdate' >"$directory/a"
      printf '\002subject:Patient.organization.name=x&code=http://loinc.org|8867-4&value-quantity=gt5||/min' >"$directory/b"
      printf '\000_has:Observation:patient:code=1234-5&_include=Patient:organization&_revinclude=Observation:subject:iterate' >"$directory/c" ;;
  esac
}

for target in "${TARGETS[@]}"; do
  corpus=tests/fuzz/corpus/$target
  seed "$target" "$corpus"
  echo "== $target for ${SECONDS_PER_TARGET}s (corpus $(ls "$corpus" | wc -l) files)"
  cargo fuzz run --fuzz-dir tests/fuzz -s none "$target" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 2>&1 \
    | grep -E '^(#[0-9]+ +(DONE|INITED)|stat::|==|SUMMARY|artifact|thread .* panicked|Done)' || true
done
