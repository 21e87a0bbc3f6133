#!/usr/bin/env bash
# Fuzzes every parser of bytes someone else wrote (fuzz/, cargo-fuzz and libFuzzer):
#   tests/fuzz.sh [SECONDS] [TARGET...]
# runs each target (all of them by default: `cargo +nightly fuzz list`) for SECONDS (30 by
# default), one after the other, from its seeds in fuzz/corpus/TARGET/seed-* and what
# earlier runs added there. Exits non-zero if any target crashes, panics, leaks, runs out of
# memory or hangs; the input that did it is in fuzz/artifacts/TARGET/ and the target's log
# is printed. Needs the nightly toolchain and cargo-fuzz (.ci/setup fuzz installs it).
# Run it under `nice -n 19` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-30}
shift || true
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: SECONDS must be a positive number of seconds, not '$secs': tests/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz or the nightly toolchain is missing: run .ci/setup fuzz (rustup toolchain install nightly; cargo +nightly install cargo-fuzz --locked)" >&2
    exit 2
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
echo "fuzz.sh: building the targets" >&2
build() {
    if ! cargo +nightly fuzz build "$@" >"$logs/build" 2>&1; then
        tail -n 40 "$logs/build" >&2
        echo "fuzz.sh: the fuzz targets do not build (above)" >&2
        exit 2
    fi
}
if [ $# -eq 0 ]; then
    build
else
    for t in "${targets[@]}"; do build "$t"; done
fi
failed=()
start=$(date +%s)
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: 2 GiB is a leak or a bomb.
    if cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$logs/$t" 2>&1; then
        result=ok
    else
        result=FAILED
        failed+=("$t")
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -n 1)
    printf 'fuzz.sh: %-16s %-6s %10s executions in %ss\n' "$t" "$result" "${runs:-?}" "$secs" >&2
    if [ "$result" = FAILED ]; then
        # The panic or sanitizer report and where the input is, without its byte dump.
        grep -E -A4 "panicked at|ERROR: |SUMMARY: |Test unit written|timeout after|out-of-memory" "$logs/$t" |
            grep -v -E '^\s+#[0-9]+ ' | head -n 40 >&2
    fi
done
echo "fuzz.sh: ${#targets[@]} targets in $(($(date +%s) - start))s" >&2
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: ${failed[*]} failed: reproduce with (cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/FILE), then keep the input as a regression test beside the parser" >&2
    exit 1
fi
