#!/usr/bin/env bash
# Benchmark of cartinject (issue 2): median latency of
#   1. a full cycle      cartinject IMG PID -- /dev/crashcart/bin/true   (attach, mount, run, clean)
#   2. the same by container name (adds the Docker API lookup)
#   3. -m then -u        cartinject -m IMG PID; cartinject -u PID
# next to, on an image mounted with -m,
#   4. the floor         nsenter -a -t PID /dev/crashcart/bin/true
#   5. the peer          docker exec NAME /dev/crashcart/bin/true
#   6. a full cycle while -m holds the image on a loop device (the device is reused)
# and the ratios of 1 to 4 (target: within 3x) and of 1 to 5 (target: well below 1).
#
# Needs root, a running Docker daemon, mke2fs, busybox-static, musl-gcc (or gcc).
# Usage: tests/bench/inject.sh [RUNS]   (CARTINJECT=path overrides the binary; default: the
# static release build that ./build.sh ships, made by .ci/build-static-cartinject).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/cartinject_bench.sh
runs=${1:-30}
bench_preflight inject.sh
bench_cartinject

work=$(mktemp -d)
name=cc-bench-inject-$$
cleanup() {
    "$CARTINJECT" -u "$name" >/dev/null 2>&1 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker rmi cc-bench-thin:latest >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# The image: static busybox and its applets, made with mke2fs -d.
img=$work/bench.img
busybox_image "$work/img" "$img" true sh ls cat

# The thin container: a static HTTP server and nothing else.
pid=$(thin_container "$work/thin" cc-bench-thin:latest "$name")

# Median wall time of RUNS runs of "$@", in microseconds, after 3 warm-up runs.
median_us() {
    local i times=()
    for i in 1 2 3; do "$@" >/dev/null 2>&1 || true; done
    for ((i = 0; i < runs; i++)); do times+=( "$(elapsed_us "$@")" ); done
    printf '%s\n' "${times[@]}" | median
}

mount_unmount() { "$CARTINJECT" -m "$img" "$pid" && "$CARTINJECT" -u "$pid"; }

full=$(median_us "$CARTINJECT" "$img" "$pid" -- /dev/crashcart/bin/true)
byname=$(median_us "$CARTINJECT" "$img" "$name" -- /dev/crashcart/bin/true)
mu=$(median_us mount_unmount)
"$CARTINJECT" -m "$img" "$pid" >/dev/null
# With the image already on a loop device (left by -m), a session reuses the device: this is
# the cycle without the kernel's LOOP_CONFIGURE and autoclear.
warm=$(median_us "$CARTINJECT" "$img" "$pid" -- /dev/crashcart/bin/true)
floor=$(median_us nsenter -a -t "$pid" /dev/crashcart/bin/true)
dexec=$(median_us docker exec "$name" /dev/crashcart/bin/true)
"$CARTINJECT" -u "$pid" >/dev/null

ms() { awk -v us="$1" 'BEGIN { printf "%8.2f ms", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "cartinject benchmark: $runs runs each, medians ($(uname -r), $(nproc) cores)"
echo "  full cycle, by PID        $(ms "$full")"
echo "  full cycle, by name       $(ms "$byname")"
echo "  full cycle, loop reused   $(ms "$warm")"
echo "  -m + -u                   $(ms "$mu")"
echo "  nsenter -a (floor)        $(ms "$floor")"
echo "  docker exec               $(ms "$dexec")"
echo "  full cycle / floor        $(ratio "$full" "$floor")x   (target: <= 3)"
echo "  loop reused / floor       $(ratio "$warm" "$floor")x"
echo "  full cycle / docker exec  $(ratio "$full" "$dexec")x"
echo "  by name / docker exec     $(ratio "$byname" "$dexec")x"
