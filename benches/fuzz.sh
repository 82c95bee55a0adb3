#!/usr/bin/env bash
# Coverage-guided fuzzing of the transform (libFuzzer through cargo fuzz) for a fixed time, seeded
# with every Debezium fixture: `bash benches/fuzz.sh [seconds]` (default 300). It prints
# libFuzzer's figures (runs, coverage, corpus); a crash stops it and leaves the input under
# benches/fuzz/artifacts/transform/, to become a regression test in tests/it/properties.rs.
#
# cargo fuzz passes nightly flags to rustc; RUSTC_BOOTSTRAP lets this machine's stable toolchain
# take them. No sanitizer (-s none): the transform has no unsafe code, and panics are what it looks
# for.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
corpus=target/fuzz/corpus/transform
mkdir -p "$corpus"
# Seeds: each fixture's value as it is (mode byte 0), and with its key before a NUL (mode 3).
n=0
while IFS= read -r -d '' value; do
    key="${value%.json}.key.json"
    case "$value" in *.key.json) continue ;; esac
    n=$((n + 1))
    { printf '\0'; cat "$value"; } > "$corpus/seed-$n-value"
    if [ -f "$key" ]; then
        { printf '\3'; cat "$key"; printf '\0'; cat "$value"; } > "$corpus/seed-$n-keyed"
    fi
done < <(find ../shared/fixtures/debezium tests/fixtures/debezium -name '*.json' -print0 | sort -z)
echo "fuzz: $n fixtures as seeds, $seconds s"
RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$PWD/target/fuzz/build" \
    cargo fuzz run --fuzz-dir benches/fuzz -s none transform "$corpus" -- \
    -max_total_time="$seconds" -max_len=1048576 -print_final_stats=1
