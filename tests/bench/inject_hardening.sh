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
# re-execution costs a session that needs it (the static release build, or $CARTINJECT): medians of
# full cycles `cartinject IMG PID -- /dev/crashcart/bin/true` into a container with
# CAP_SYS_PTRACE (sealed copy) and into a default one (no copy: non-dumpable suffices),
# interleaved.
#
# Needs root, a running Docker daemon, mke2fs, busybox-static, musl-gcc (or gcc),
# util-linux. Usage: tests/bench/inject_hardening.sh [SESSIONS] (default 200; the tests
# alone run 30). CC_SEED replays the random moments of a kill -9 run.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/cartinject_bench.sh
sessions=${1:-200}
bench_preflight inject_hardening.sh
bench_cartinject
work=$(mktemp -d)
name=cc-bench-hardening-$$
cleanup() {
    docker rm -f "$name-default" "$name-ptrace" >/dev/null 2>&1 || true
    docker rmi cc-bench-hardening:latest >/dev/null 2>&1 || true
    rm -rf "$work" "${log:-}"
}
trap cleanup EXIT
busybox_image "$work/img" "$work/bench.img" true
mkdir -p "$work/root/bin"
cp /bin/busybox "$work/root/bin/busybox"
ln -s busybox "$work/root/bin/sleep"
tar -C "$work/root" -c . | docker import -c 'CMD ["/bin/sleep", "100000"]' - cc-bench-hardening:latest >/dev/null
docker run -d --network none --name "$name-default" cc-bench-hardening:latest >/dev/null
docker run -d --network none --cap-add SYS_PTRACE --name "$name-ptrace" cc-bench-hardening:latest >/dev/null
plain_pid=$(docker inspect -f '{{.State.Pid}}' "$name-default")
ptrace_pid=$(docker inspect -f '{{.State.Pid}}' "$name-ptrace")
cycle_us() { elapsed_us "$CARTINJECT" "$work/bench.img" "$1" -- /dev/crashcart/bin/true; }
plain_times=() sealed_times=()
for i in 1 2 3; do cycle_us "$plain_pid" >/dev/null; cycle_us "$ptrace_pid" >/dev/null; done
for ((i = 0; i < 60; i++)); do
    plain_times+=( "$(cycle_us "$plain_pid")" )
    sealed_times+=( "$(cycle_us "$ptrace_pid")" )
done
plain=$(printf '%s\n' "${plain_times[@]}" | median)
sealed=$(printf '%s\n' "${sealed_times[@]}" | median)
size=$(stat -c %s "$CARTINJECT")

cargo build -q -p cartinject
cargo test -q -p crashcart-tests --test inject_hostile --test inject_scale --no-run
log=$(mktemp)
status=0
CC_HOSTILE_SESSIONS=$sessions CC_KILL_TRIALS=100 CC_CONTAINERS=20 \
    cargo test -q -p crashcart-tests --test inject_hostile --test inject_scale -- \
    --nocapture --test-threads=1 >"$log" 2>&1 || status=$?

echo "cartinject hardening figures ($(uname -r), $(nproc) cores): $sessions sessions per hostile container"
awk -v p="$plain" -v s="$sealed" -v b="$size" 'BEGIN { printf "  sealed re-exec: %.2f ms per session that needs it (%.1f MB binary; full cycle into a CAP_SYS_PTRACE container %.2f ms, into a default one %.2f ms; medians of 60)\n", (s - p) / 1000, b / 1048576, s / 1000, p / 1000 }'
# A test's output may follow its "test NAME ... " on the same line.
grep -oE '(FIGURE|moments seed).*' "$log" | sed -e 's/^FIGURE /  /' -e 's/^moments seed/  kill -9 moments seed/'
grep -E '^test result' "$log" | sed 's/^/  /'
if [ "$status" != 0 ]; then
    echo "inject_hardening.sh: a test failed; its output:" >&2
    cat "$log" >&2
    exit "$status"
fi
