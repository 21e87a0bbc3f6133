#!/usr/bin/env bash
# Figures of cartinject's hardening and crash behaviour (issue 5), at the issue's full counts:
#   - hostile process: a container's PID 1 that tries to reach the host through every
#     process of cartinject it can see, during SESSIONS injections in a default container
#     and SESSIONS in one with CAP_SYS_PTRACE (attempts, successes by kind, what was
#     reached, escapes), plus the negative control that shows an escape is recognised;
#   - 20 containers at once from one image (sessions, loop devices, what is left);
#   - 100 kill -9 of cartinject at random moments of sessions and -m;
#   - a target that exits in the middle of a session.
# It runs tests/inject_hostile.rs and tests/inject_scale.rs with these counts and prints
# their FIGURE lines; it fails when a test fails. First it measures what the sealed
# re-execution costs every session (a release build, or $CARTINJECT): the median of a
# session with an image that does not exist (copy, seal, re-exec, then a one-line error)
# less that of `cartinject --version` (no copy).
#
# Needs root, a running Docker daemon, mke2fs, busybox-static, musl-gcc (or gcc),
# util-linux. Usage: tests/bench/inject_hardening.sh [SESSIONS] (default 200; the tests
# alone run 30). CC_SEED replays the random moments of a kill -9 run.
set -euo pipefail
cd "$(dirname "$0")/../.."
sessions=${1:-200}
[ "$(id -u)" = 0 ] || { echo "inject_hardening.sh: run as root" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "inject_hardening.sh: the Docker daemon is not running" >&2; exit 1; }

if [ -z "${CARTINJECT:-}" ]; then
    cargo build --release -q -p cartinject
    CARTINJECT=${CARGO_TARGET_DIR:-target}/release/cartinject
fi
median_us() {
    local i t0 t1 times=()
    for i in 1 2 3; do "$@" >/dev/null 2>&1 || true; done
    for ((i = 0; i < 100; i++)); do
        t0=$EPOCHREALTIME
        "$@" >/dev/null 2>&1 || true
        t1=$EPOCHREALTIME
        times+=( $(( (${t1/./} - ${t0/./}) )) )
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'
}
plain=$(median_us "$CARTINJECT" --version)
sealed=$(median_us "$CARTINJECT" /nonexistent/crashcart.img pid:1 -- true)
size=$(stat -c %s "$CARTINJECT")

cargo build -q -p cartinject
cargo test -q -p crashcart-tests --test inject_hostile --test inject_scale --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
CC_HOSTILE_SESSIONS=$sessions CC_KILL_TRIALS=100 CC_CONTAINERS=20 \
    cargo test -q -p crashcart-tests --test inject_hostile --test inject_scale -- \
    --nocapture --test-threads=1 >"$log" 2>&1 || status=$?

echo "cartinject hardening figures ($(uname -r), $(nproc) cores): $sessions sessions per hostile container"
awk -v p="$plain" -v s="$sealed" -v b="$size" 'BEGIN { printf "  sealed re-exec: %.2f ms per session (%.1f MB binary; a session that stops at a missing image %.2f ms, --version %.2f ms; medians of 100)\n", (s - p) / 1000, b / 1048576, s / 1000, p / 1000 }'
# A test's output may follow its "test NAME ... " on the same line.
grep -oE '(FIGURE|moments seed).*' "$log" | sed -e 's/^FIGURE /  /' -e 's/^moments seed/  kill -9 moments seed/'
grep -E '^test result' "$log" | sed 's/^/  /'
if [ "$status" != 0 ]; then
    echo "inject_hardening.sh: a test failed; its output:" >&2
    cat "$log" >&2
    exit "$status"
fi
